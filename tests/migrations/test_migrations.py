"""The migration guides, checked: real scripts written for plain PyTorch DDP and for Accelerate,
and their switchyard ports (docs/migrating-from-ddp.md, docs/migrating-from-accelerate.md),
compute the same losses.

* pytorch/examples' DDP tutorial, in two processes over gloo: the original's ``mp.spawn``
  against ``switchyard run --devices 2``; every step's loss on every rank, and the saved
  weights, bit for bit.
* pytorch/examples' MNIST, in this process: every training loss and the accuracy bit for bit;
  the test loss to 1e-6 (the original sums its batches' losses in Python floats, the port in a
  float32 tensor on the device so that it can be summed across processes).
* an Accelerate script, in this process, against the same script in plain PyTorch; and against
  Accelerate itself where its environment was built (scripts/engine-env accelerate), else
  skipped with the reason (``SWITCHYARD_REQUIRE_ACCELERATE=1`` makes that a failure, for CI
  once the environment is built).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from switchyard.testing.subprocesses import child_environment, run

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
TIMEOUT = 120


def script_main(name: str, argv: list[str]) -> tuple[Any, str]:
    """Run ``name``'s ``main(argv)`` in this process; its result and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = runpy.run_path(str(HERE / name), run_name="migration")["main"](argv)
    return result, printed.getvalue()


def run_script(command: list[str], log: Path, import_path: bool = True) -> str:
    """Run ``command`` in this folder; ``import_path=False`` for another environment's python,
    which must not import this one's packages."""
    finished = run(
        command,
        timeout=TIMEOUT,
        log=log,
        env=child_environment(
            {"OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}, import_path=import_path
        ),
        cwd=HERE,
    )
    assert finished.returncode == 0, f"{command} {finished.describe()}:\n{finished.tail(60)}"
    return finished.output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.distributed
def test_ddp_tutorial_in_two_processes(tmp_path: Path) -> None:
    raw, port = tmp_path / "raw", tmp_path / "switchyard"
    raw.mkdir()
    port.mkdir()
    args = ["2", "1", "--batch_size", "64"]
    spawn = [sys.executable, "ddp_tutorial_raw.py", *args, "--world-size", "2"]
    run_script([*spawn, "--port", str(free_port()), "--out", str(raw)], tmp_path / "raw.log")
    launch = [sys.executable, "-m", "switchyard", "run", "--accelerator", "cpu", "--devices", "2"]
    run_script(
        [*launch, "ddp_tutorial_switchyard.py", *args, "--out", str(port)],
        tmp_path / "switchyard.log",
    )
    for rank in (0, 1):
        expected = json.loads((raw / f"losses-{rank}.json").read_text())
        assert len(expected) == 2 * 2048 // 2 // 64
        assert json.loads((port / f"losses-{rank}.json").read_text()) == expected, rank
    saved = torch.load(raw / "checkpoint.pt", weights_only=True)
    ported = torch.load(port / "checkpoint.pt", weights_only=True)["model"]
    assert saved.keys() == ported.keys()
    for key in saved:
        assert torch.equal(saved[key], ported[key]), key


def test_mnist_in_one_process() -> None:
    args = ["--samples", "32", "--test-samples", "51", "--batch-size", "16"]
    args += ["--test-batch-size", "25"]
    raw, raw_printed = script_main("mnist_raw.py", args)
    port, port_printed = script_main("mnist_switchyard.py", args)
    assert len(raw["losses"]) == 2 * 2
    assert port["losses"] == raw["losses"]
    assert [correct for _, correct in port["tests"]] == [correct for _, correct in raw["tests"]]
    for (port_loss, _), (raw_loss, _) in zip(port["tests"], raw["tests"], strict=True):
        assert port_loss == pytest.approx(raw_loss, rel=1e-6)
    assert port_printed.count("Test set") == raw_printed.count("Test set") == 2


def test_accelerate_port_matches_plain_pytorch() -> None:
    expected, _ = script_main("accelerate_torch.py", [])
    ported, printed = script_main("accelerate_switchyard.py", [])
    assert len(expected["losses"]) == 2 * 512 // 32
    assert ported == expected
    assert f"accuracy {expected['accuracies'][-1][0]}/301" in printed


def accelerate_python() -> Path | None:
    """The newest complete Accelerate environment scripts/engine-env built for this checkout."""
    cache = Path(os.environ.get("SWITCHYARD_CACHE") or Path.home() / ".cache" / "switchyard")
    built = [
        venv
        for venv in (cache / "envs").glob("accelerate-*")
        if (venv / ".complete").exists()
        and (venv / ".root").exists()
        and (venv / ".root").read_text().strip() == str(ROOT)
        and (venv / "bin" / "python").exists()
    ]
    if not built:
        return None
    return max(built, key=lambda venv: (venv / ".complete").stat().st_mtime) / "bin" / "python"


def test_accelerate_original_matches_port(tmp_path: Path) -> None:
    python = accelerate_python()
    if python is None:
        reason = (
            "no Accelerate environment for this checkout (scripts/engine-env accelerate "
            "builds it); the port is still checked against plain PyTorch"
        )
        if os.environ.get("SWITCHYARD_REQUIRE_ACCELERATE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path / "accelerate.json"
    run_script(
        [str(python), "accelerate_original.py", "--out", str(out)],
        tmp_path / "log",
        import_path=False,
    )
    ported, _ = script_main("accelerate_switchyard.py", [])
    assert ported == json.loads(out.read_text())
