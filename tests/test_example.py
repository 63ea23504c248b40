"""The main job's script, examples/train.py, run for real (one short epoch, one process): it
trains, evaluates, logs through the CSV logger and plots what it logged."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train.py"


@pytest.fixture
def example():
    spec = importlib.util.spec_from_file_location("switchyard_example_train", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_the_example_trains_logs_a_csv_and_plots_it(example, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--epochs", "2", "--samples", "1024", "--val-samples", "301", "--log-every", "4"]
    example.main(argv)
    out = capsys.readouterr().out

    run = tmp_path / "runs" / "logs" / "train" / "version_0"
    with (run / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    train = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    validation = [float(r["val_accuracy"]) for r in rows if r["val_accuracy"]]
    assert len(train) == 2 * 1024 // 64 // 4  # every 4th of 16 steps, two epochs
    assert len(validation) == 2  # once per epoch
    assert train[-1] < train[0]  # it learns
    assert validation[-1] > 1 / 8  # better than chance over 8 classes
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)
    assert steps[-1] == 2 * 1024 // 64

    # the accuracy printed is the one logged, printed once per epoch
    printed = re.findall(r"validation accuracy ([\d.]+)% over 301 samples", out)
    assert [float(p) for p in printed] == pytest.approx([100 * v for v in validation], abs=0.01)

    assert json.loads((run / "hparams.json").read_text())["epochs"] == 2
    picture = run / "loss.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loss curve plotted to" in out
