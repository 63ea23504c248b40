"""Loggers: ``Runtime(loggers=...)``, ``runtime.log``/``log_dict``/``log_hyperparams``, the
``switchyard_loggers`` hook, and the built-in ``csv`` and ``tensorboard`` loggers.

Every file is a real file on disk (``tmp_path``). Three tests start real processes: a script
killed with SIGKILL (its rows survive), a script that ends with an uncaught exception (its
loggers are told ``"failed"``), and one two-process DDP job over gloo (``switchyard run
--devices 2``, this file as the script: ``main`` below) in which only rank zero writes.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import pickle
import sys
import textwrap
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from switchyard import (
    ArgumentError,
    Logger,
    LoggerEntry,
    PluginSelectionError,
    Runtime,
    SelectionError,
    hookimpl,
)
from switchyard.builtin.csv_logger import CSVLogger
from switchyard.cli import plugins_report
from switchyard.loggers import create_loggers
from switchyard.registry import PluginRegistry
from switchyard.testing.subprocesses import child_environment, run

TIMEOUT = 120
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


class RecordingLogger(Logger):
    """A real Logger subclass that keeps what it is given (a third-party logger's shape)."""

    def __init__(self, status_file: str | None = None) -> None:
        self.metrics: list[tuple[dict[str, Any], int | None]] = []
        self.hparams: list[dict[str, Any]] = []
        self.statuses: list[str] = []
        self.status_file = status_file

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self.hparams.append(dict(params))

    def finalize(self, status: str) -> None:
        self.statuses.append(status)
        if self.status_file:
            Path(self.status_file).write_text(status)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


# -- the csv logger ---------------------------------------------------------------------------


def test_csv_rows_with_a_header_that_grows_and_steps_counted_or_given(tmp_path: Path) -> None:
    runtime = Runtime(accelerator="cpu", loggers=CSVLogger(root_dir=tmp_path, name="exp"))
    runtime.log("loss", torch.tensor(2.5))  # step 0: counted by the logger
    runtime.log("loss", 1.25)  # step 1
    runtime.log_dict({"accuracy": torch.tensor([0.5]), "loss": 1}, step=10)
    runtime.log("lr", 0.1)  # step 3: the fourth call
    runtime.teardown()

    path = tmp_path / "exp" / "version_0" / "metrics.csv"
    assert runtime.logger.log_dir == str(path.parent)
    assert header(path) == ["step", "loss", "accuracy", "lr"]
    assert rows(path) == [
        {"step": "0", "loss": "2.5", "accuracy": "", "lr": ""},
        {"step": "1", "loss": "1.25", "accuracy": "", "lr": ""},
        {"step": "10", "loss": "1", "accuracy": "0.5", "lr": ""},
        {"step": "3", "loss": "", "accuracy": "", "lr": "0.1"},
    ]
    # the rewrite for a wider header leaves no temporary behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.csv"]


def test_csv_by_name_writes_under_logs_of_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runtime = Runtime(accelerator="cpu", loggers="csv")
    assert runtime.logger.log_dir == str(Path("logs") / "switchyard" / "version_0")
    assert not (tmp_path / "logs").exists(), "a logger creates nothing before it is used"
    runtime.log("loss", 1.0)
    runtime.teardown()
    assert rows(tmp_path / "logs" / "switchyard" / "version_0" / "metrics.csv") == [
        {"step": "0", "loss": "1.0"}
    ]


def test_each_run_takes_the_next_version_and_a_given_one_is_not_overwritten(
    tmp_path: Path,
) -> None:
    for expected in range(3):
        logger = CSVLogger(root_dir=tmp_path)
        assert logger.version == expected
        logger.log_metrics({"x": float(expected)})
        logger.finalize("success")
        assert Path(logger.log_dir).name == f"version_{expected}"
    assert rows(tmp_path / "switchyard" / "version_2" / "metrics.csv") == [
        {"step": "0", "x": "2.0"}
    ]
    again = CSVLogger(root_dir=tmp_path, version=1)
    with pytest.raises(ArgumentError, match=r"version=1.*already holds another run"):
        again.log_metrics({"x": 9.0})
    assert rows(tmp_path / "switchyard" / "version_1" / "metrics.csv") == [
        {"step": "0", "x": "1.0"}
    ]


def test_csv_hyperparameters_to_json_from_a_mapping_or_a_namespace(tmp_path: Path) -> None:
    runtime = Runtime(accelerator="cpu", loggers=CSVLogger(root_dir=tmp_path))
    runtime.log_hyperparams(argparse.Namespace(lr=0.01, batch_size=32))
    runtime.log_hyperparams({"device": torch.device("cpu"), "lr": 0.02})
    runtime.logger.log_hyperparams(argparse.Namespace(seed=3))  # type: ignore[arg-type]
    saved = json.loads((tmp_path / "switchyard" / "version_0" / "hparams.json").read_text())
    assert saved == {"lr": 0.02, "batch_size": 32, "device": "cpu", "seed": 3}
    with pytest.raises(ArgumentError, match="mapping of names to values or an argparse"):
        runtime.log_hyperparams([("lr", 1)])


def test_a_killed_run_keeps_every_row_logged_before(tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal
            from switchyard import Runtime
            from switchyard.builtin.csv_logger import CSVLogger

            runtime = Runtime(accelerator="cpu", loggers=CSVLogger(root_dir={str(tmp_path)!r}))
            runtime.log("loss", 3.0)
            runtime.log_dict({{"loss": 2.0, "accuracy": 0.5}})  # a new column: a rewrite
            runtime.log("loss", 1.0)
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    finished = run([sys.executable, str(script)], timeout=TIMEOUT, log=tmp_path / "log")
    assert finished.returncode == -9, finished.output
    assert rows(tmp_path / "switchyard" / "version_0" / "metrics.csv") == [
        {"step": "0", "loss": "3.0", "accuracy": ""},
        {"step": "1", "loss": "2.0", "accuracy": "0.5"},
        {"step": "2", "loss": "1.0", "accuracy": ""},
    ]


def test_a_csv_logger_travels_to_another_process_and_appends(tmp_path: Path) -> None:
    logger = CSVLogger(root_dir=tmp_path)
    logger.log_metrics({"loss": 1.0})
    copy = pickle.loads(pickle.dumps(logger))  # what ddp_spawn does to a runtime
    logger.finalize("success")
    copy.log_metrics({"loss": 0.5})
    copy.finalize("success")
    assert rows(tmp_path / "switchyard" / "version_0" / "metrics.csv") == [
        {"step": "0", "loss": "1.0"},
        {"step": "1", "loss": "0.5"},
    ]


def test_a_metric_named_step_is_refused_by_the_csv_logger(tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match="pass it as step="):
        CSVLogger(root_dir=tmp_path).log_metrics({"step": 3.0})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "must be a folder name"),
        ({"name": "a/b"}, "must be a folder name"),
        ({"version": -1}, "whole number from 0"),
        ({"version": "3"}, "whole number from 0"),
        ({"root_dir": 3}, "must be a path"),
    ],
)
def test_bad_csv_logger_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        CSVLogger(**kwargs)


# -- the tensorboard logger -------------------------------------------------------------------


@pytest.mark.skipif(HAS_TENSORBOARD, reason="tensorboard is installed here: nothing is missing")
def test_tensorboard_without_the_package_says_how_to_install_it(tmp_path: Path) -> None:
    for name in ("tensorboard", "tb"):
        with pytest.raises(SelectionError) as raised:
            Runtime(accelerator="cpu", loggers=name)
        message = str(raised.value)
        assert "logger 'tensorboard' from plugin builtin" in message
        assert "needs the module tensorboard" in message
        assert "pip install tensorboard" in message
        assert "csv" in message  # what else is there
    report = plugins_report(PluginRegistry())
    entry = next(
        e for e in report["entries"] if e["kind"] == "logger" and e["name"] == "tensorboard"
    )
    assert entry["usable"] is False
    assert entry["reason"] == "needs tensorboard (not installed)"
    assert "switchyard.builtin.tensorboard_logger" not in sys.modules


@pytest.mark.skipif(
    not HAS_TENSORBOARD, reason="needs the tensorboard package (pip install tensorboard)"
)
def test_tensorboard_scalars_and_hparams_are_written(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from switchyard.builtin.tensorboard_logger import TensorBoardLogger

    runtime = Runtime(accelerator="cpu", loggers=TensorBoardLogger(root_dir=tmp_path))
    runtime.log("loss", torch.tensor(2.0))
    runtime.log("loss", 1.0)
    runtime.log_dict({"loss": 0.5, "val/accuracy": 0.75}, step=10)
    runtime.log_hyperparams({"lr": 0.1, "device": torch.device("cpu")})
    runtime.teardown()
    folder = tmp_path / "switchyard" / "version_0"
    assert runtime.logger.log_dir == str(folder)
    events = EventAccumulator(str(folder))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert loss == [(0, 2.0), (1, 1.0), (10, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("val/accuracy")] == [(10, 0.75)]
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == 0.1
    assert hparams["device"].string_value == "cpu"


# -- Runtime(loggers=...) and runtime.log -----------------------------------------------------


def test_loggers_are_given_checked_numbers_on_the_logger_and_loggers_properties() -> None:
    first, second = RecordingLogger(), RecordingLogger()
    runtime = Runtime(accelerator="cpu", loggers=[first, second])
    assert runtime.logger is first
    assert runtime.loggers == [first, second]
    runtime.log_dict({"a": torch.tensor(1.5), "b": torch.tensor([2], dtype=torch.int64)})
    runtime.log("c", torch.tensor(3.0, dtype=torch.float64).numpy(), step=4)
    runtime.log_hyperparams({"lr": 0.1})
    runtime.teardown()
    for logger in (first, second):
        assert logger.metrics == [({"a": 1.5, "b": 2}, None), ({"c": 3.0}, 4)]
        assert all(type(v) in (float, int) for m, _ in logger.metrics for v in m.values())
        assert logger.hparams == [{"lr": 0.1}]
        assert logger.statuses == ["success"]


def test_a_failed_launched_function_finalizes_the_loggers_as_failed() -> None:
    logger = RecordingLogger()
    runtime = Runtime(accelerator="cpu", loggers=logger)

    def train(runtime: Runtime) -> None:
        runtime.log("loss", 1.0)
        raise ValueError("diverged")

    with pytest.raises(ValueError, match="diverged"):
        runtime.launch(train)
    assert logger.metrics == [({"loss": 1.0}, None)]
    assert logger.statuses == ["failed"]


def test_the_end_of_a_script_finalizes_the_loggers(tmp_path: Path) -> None:
    """Without launch(fn), the run ends with the script: an uncaught exception is 'failed'."""
    module = Path(__file__).resolve()
    for ending, expected in (("pass", "success"), ("raise SystemError('boom')", "failed")):
        status = tmp_path / f"{expected}.txt"
        script = tmp_path / f"{expected}.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import importlib.util
                spec = importlib.util.spec_from_file_location("loggers_tests", {str(module)!r})
                tests = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(tests)
                from switchyard import Runtime

                runtime = Runtime(accelerator="cpu", loggers=tests.RecordingLogger({str(status)!r}))
                runtime.launch()
                runtime.log("loss", 1.0)
                {ending}
                """
            )
        )
        finished = run([sys.executable, str(script)], timeout=TIMEOUT, log=tmp_path / "log")
        assert (finished.returncode == 0) == (expected == "success"), finished.output
        assert status.read_text() == expected, finished.output


def test_runtime_without_loggers_imports_no_logging_code(tmp_path: Path) -> None:
    code = (
        "import sys, warnings\n"
        "from switchyard import Runtime\n"
        "runtime = Runtime(accelerator='cpu', callbacks=None)\n"
        "loaded = sorted(m for m in sys.modules if m in ('switchyard.loggers', "
        "'switchyard.callbacks', 'switchyard.builtin.csv_logger', "
        "'switchyard.builtin.tensorboard_logger', 'torch.utils.tensorboard'))\n"
        "print('LOADED', loaded)\n"
    )
    finished = run(
        [sys.executable, "-c", code],
        timeout=TIMEOUT,
        log=tmp_path / "log",
        env=child_environment(),
    )
    assert finished.returncode == 0, finished.output
    assert "LOADED []" in finished.output, finished.output


def test_logging_without_a_logger_warns_once_and_logger_says_what_to_pass() -> None:
    runtime = Runtime(accelerator="cpu")
    assert runtime.loggers == []
    with pytest.raises(RuntimeError, match=r"no logger: pass one as Runtime\(loggers='csv'\).*csv"):
        runtime.logger  # noqa: B018
    with pytest.warns(RuntimeWarning, match="no logger, so nothing is recorded"):
        runtime.log("loss", 1.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.log("loss", 2.0)  # once is enough


def test_unknown_logger_name_lists_the_installed_ones_and_the_close_match() -> None:
    with pytest.raises(SelectionError) as raised:
        Runtime(accelerator="cpu", loggers=["csv", "cvs"])
    message = str(raised.value)
    assert "unknown logger 'cvs'" in message
    assert "Did you mean 'csv'?" in message
    assert "Installed loggers: csv, tensorboard" in message


@pytest.mark.parametrize(
    ("loggers", "message"),
    [
        (42, r"loggers=42 \(int\) must be a logger name"),
        ({"csv": 1}, r"must be a logger name such as 'csv'"),
        ([object()], r"loggers\[0\]=<object.*is not a switchyard.Logger"),
        (RecordingLogger, r"loggers\[0\]=RecordingLogger is a Logger class; pass an instance"),
        ([types.SimpleNamespace(log_metrics=print)], "a Lightning Fabric logger"),
    ],
)
def test_what_is_not_a_logger_is_refused(loggers: object, message: str) -> None:
    if isinstance(loggers, type):
        loggers = [loggers]
    with pytest.raises(ArgumentError, match=message) as raised:
        Runtime(accelerator="cpu", loggers=loggers)  # type: ignore[arg-type]
    assert "installed loggers: csv, tensorboard" in str(raised.value)


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        (
            {"loss": torch.ones(3)},
            r"metric 'loss' is a tensor of shape \(3,\), but a metric is one",
        ),
        ({"name": "resnet"}, r"metric 'name' is 'resnet' \(str\), which is not a number"),
        ({"loss": None}, r"metric 'loss' is None"),
        ({"z": 1j}, r"metric 'z' is 1j \(complex\)"),
        ({3: 1.0}, "metric names must be non-empty strings"),
        ([("loss", 1.0)], "takes a mapping of metric names to numbers"),
    ],
)
def test_bad_metrics_are_refused_before_any_logger_sees_them(metrics: Any, message: str) -> None:
    logger = RecordingLogger()
    runtime = Runtime(accelerator="cpu", loggers=logger)
    with pytest.raises(ArgumentError, match=message):
        runtime.log_dict(metrics)
    assert logger.metrics == []


def test_nested_metrics_are_flattened_with_a_slash() -> None:
    logger = RecordingLogger()
    runtime = Runtime(accelerator="cpu", loggers=logger)
    runtime.log_dict({"val": {"acc": torch.tensor(0.5), "top": {"5": 0.9}}, "loss": 1.0})
    assert logger.metrics == [({"val/acc": 0.5, "val/top/5": 0.9, "loss": 1.0}, None)]
    with pytest.raises(ArgumentError, match="metric 'val/acc' is given twice"):
        runtime.log_dict({"val": {"acc": 1.0}, "val/acc": 2.0})
    with pytest.raises(ArgumentError, match=r"metric 'val/acc' is a tensor of shape \(2,\)"):
        runtime.log_dict({"val": {"acc": torch.ones(2)}})


def test_bad_steps_and_names_are_refused() -> None:
    runtime = Runtime(accelerator="cpu", loggers=RecordingLogger())
    with pytest.raises(ArgumentError, match=r"step='3' \(str\) must be a whole number"):
        runtime.log("loss", 1.0, step="3")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match=r"step=True \(bool\)"):
        runtime.log_dict({"loss": 1.0}, step=True)
    with pytest.raises(ArgumentError, match="the metric's name must be a string"):
        runtime.log(1, 1.0)  # type: ignore[arg-type]


def test_logging_after_teardown_and_before_launch_of_several_processes() -> None:
    logger = RecordingLogger()
    runtime = Runtime(accelerator="cpu", loggers=logger)
    runtime.log("loss", 1.0)
    runtime.teardown()
    with pytest.raises(RuntimeError, match=r"runtime.log\(\) after the run ended.*finalized"):
        runtime.log("loss", 2.0)
    with pytest.raises(RuntimeError, match=r"runtime.log_hyperparams\(\) after the run ended"):
        runtime.log_hyperparams({"lr": 1})
    assert logger.metrics == [({"loss": 1.0}, None)]
    assert logger.statuses == ["success"]  # once, though teardown is safe to call again
    runtime.teardown()
    assert logger.statuses == ["success"]

    two = Runtime(accelerator="cpu", devices=2, strategy="ddp", loggers=RecordingLogger())
    with pytest.raises(RuntimeError, match=r"call runtime.launch\(\) before"):
        two.log("loss", 1.0)


def test_a_logger_that_fails_to_finalize_warns_and_the_others_are_finalized() -> None:
    class Broken(RecordingLogger):
        def finalize(self, status: str) -> None:
            raise OSError("disk full")

    good = RecordingLogger()
    runtime = Runtime(accelerator="cpu", loggers=[Broken(), good])
    runtime.log("loss", 1.0)
    with pytest.warns(RuntimeWarning, match=r"Broken failed to finalize \(success\): OSError"):
        runtime.teardown()
    assert good.statuses == ["success"]


# -- the switchyard_loggers hook --------------------------------------------------------------


def _logger_plugin(name: str, hook: Any) -> types.ModuleType:
    plugin = types.ModuleType(name)
    plugin.switchyard_loggers = hookimpl(hook)  # type: ignore[attr-defined]
    return plugin


def test_a_plugin_logger_is_created_by_name_with_its_init_args(tmp_path: Path) -> None:
    plugin = _logger_plugin(
        "acme_tracking",
        lambda: LoggerEntry(
            name="acme",
            factory=CSVLogger,
            init_args={"root_dir": str(tmp_path), "name": "acme-exp"},
            description="Acme's tracker",
        ),
    )
    runtime = Runtime(accelerator="cpu", plugins=[plugin], loggers=["acme", "csv"])
    acme, builtin_csv = runtime.loggers
    assert isinstance(acme, CSVLogger)
    assert acme.log_dir == str(tmp_path / "acme-exp" / "version_0")
    assert isinstance(builtin_csv, CSVLogger)
    report = plugins_report(runtime.registry)
    kinds = {(e["kind"], e["name"]): e for e in report["entries"]}
    assert kinds["logger", "acme"]["plugin"] == "acme_tracking"
    assert kinds["logger", "acme"]["usable"] is True


def test_a_broken_logger_plugin_does_not_hide_the_others(plugin_site: Any, tmp_path: Path) -> None:
    """Two installed distributions: one whose switchyard_loggers raises, one that works."""
    broken = plugin_site.module(
        "broken_tracker",
        """
        from switchyard import hookimpl

        @hookimpl
        def switchyard_loggers():
            raise ImportError("no module named 'broken_client'")
        """,
    )
    working = plugin_site.module(
        "working_tracker",
        """
        from switchyard import LoggerEntry, hookimpl

        @hookimpl
        def switchyard_loggers():
            yield LoggerEntry(name="working", factory="switchyard.builtin.csv_logger:CSVLogger",
                              init_args={"name": "working"})
        """,
    )
    plugin_site.distribution("broken-tracker", entry_points={"broken": broken})
    plugin_site.distribution("working-tracker", entry_points={"working": working})
    registry = PluginRegistry()
    loggers = create_loggers(registry, ["working", "csv"])
    assert [logger.name for logger in loggers] == ["working", "switchyard"]
    failure = next(f for f in registry.failures if f.plugin.name == "broken")
    assert failure.stage == "switchyard_loggers"
    assert "broken_client" in failure.error
    with pytest.raises(SelectionError) as raised:
        create_loggers(registry, "brokn")
    assert "Some plugins failed to load and may have provided it: broken" in str(raised.value)


def test_a_logger_plugin_returning_the_wrong_records_or_objects_is_named() -> None:
    wrong_record = _logger_plugin("wrong_record", lambda: ["csv"])
    not_a_logger = _logger_plugin(
        "not_a_logger", lambda: LoggerEntry(name="odd", factory=dict, description="odd")
    )
    raising = _logger_plugin(
        "raising", lambda: LoggerEntry(name="raising", factory="no_such_module_xyz:Logger")
    )
    registry = PluginRegistry([wrong_record, not_a_logger, raising])
    assert "csv" in registry.names("logger")  # discovery ran, the others' loggers are there
    failure = next(f for f in registry.failures if f.plugin.name == "wrong_record")
    assert "must return LoggerEntry records, got str" in failure.error
    with pytest.raises(
        PluginSelectionError, match=r"returned builtins.dict, which is not a switchyard Logger"
    ):
        create_loggers(registry, "odd")
    with pytest.raises(
        PluginSelectionError, match=r"logger 'raising' from plugin raising.*could not be created"
    ):
        create_loggers(registry, "raising")


# -- the logger plugin of docs/plugin-authors.md ---------------------------------------------

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugin-authors.md"

FAKE_WANDB = '''
"""A stand-in for the wandb client (there is no W&B server here): it keeps what a run is
given and writes it to wandb-run.json when the run finishes."""
import json

class _Config(dict):
    def update(self, values, allow_val_change=False):
        super().update(values)

class Run:
    id = "abc123"
    def __init__(self, project):
        self.project, self.config, self.logged = project, _Config(), []
    def log(self, data, step=None):
        self.logged.append([data, step])
    def finish(self, exit_code=None):
        with open("wandb-run.json", "w") as out:
            json.dump({"project": self.project, "config": self.config, "logged": self.logged,
                       "exit_code": exit_code, "inits": len(runs)}, out)

runs = []
def init(project=None, **kwargs):
    runs.append(Run(project))
    return runs[-1]
'''

WANDB_SCRIPT = """
import json, sys
import torch
import switchyard_wandb_plugin
from switchyard import Runtime

runtime = Runtime(accelerator="cpu", plugins=[switchyard_wandb_plugin], loggers=["wandb", "csv"])
assert runtime.logger.version is None, "no run is started before something is logged"
runtime.log_hyperparams({"lr": 0.1})
runtime.log("loss", torch.tensor(0.5))
runtime.log_dict({"loss": 0.25, "accuracy": 0.75}, step=7)
print("VERSION", runtime.logger.version)
"""


def _page_block(title: str) -> str:
    import re

    text = PAGE.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- tested: {re.escape(title)} [^>]*-->\s*```python\n(.*?)```", text, re.DOTALL
    )
    assert match, f"{PAGE} has no tested block {title!r}"
    return match.group(1)


def test_the_documented_wandb_logger_plugin_works(tmp_path: Path) -> None:
    """The page's plugin.py and logger.py, run as written, against a stand-in for wandb (a fake:
    no W&B account or server here)."""
    package = tmp_path / "switchyard_wandb"
    package.mkdir()
    (package / "__init__.py").write_text('"""switchyard-wandb."""\n')
    (package / "logger.py").write_text(_page_block("wandb logger.py"))
    (tmp_path / "switchyard_wandb_plugin.py").write_text(_page_block("wandb plugin.py"))
    (tmp_path / "wandb.py").write_text(textwrap.dedent(FAKE_WANDB))
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(WANDB_SCRIPT))
    finished = run(
        [sys.executable, str(script)],
        timeout=TIMEOUT,
        log=tmp_path / "log",
        cwd=tmp_path,
        env=child_environment(pythonpath=[tmp_path]),
    )
    assert finished.returncode == 0, finished.output
    assert "VERSION abc123" in finished.output
    saved = json.loads((tmp_path / "wandb-run.json").read_text())
    assert saved == {
        "project": None,
        "config": {"lr": 0.1},
        "logged": [[{"loss": 0.5}, None], [{"loss": 0.25, "accuracy": 0.75}, 7]],
        "exit_code": 0,
        "inits": 1,
    }
    assert rows(tmp_path / "logs" / "switchyard" / "version_0" / "metrics.csv") == [
        {"step": "0", "loss": "0.5", "accuracy": ""},
        {"step": "7", "loss": "0.25", "accuracy": "0.75"},
    ]


# -- two processes ----------------------------------------------------------------------------


class RankCallback:
    """Writes a file per rank, so the test sees that callbacks run on every process."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_epoch_end(self, runtime: Runtime, epoch: int) -> None:
        (self.folder / f"callback-rank{runtime.global_rank}-epoch{epoch}").touch()


def main() -> None:
    root = sys.argv[1]
    runtime = Runtime(
        accelerator="cpu", loggers=CSVLogger(root_dir=root), callbacks=RankCallback(root)
    )
    runtime.launch()
    runtime.log_hyperparams({"world_size": runtime.world_size})
    for epoch in range(3):
        # each rank logs its own value: only rank zero's may land in the file
        runtime.log("rank_value", torch.tensor(float(100 * runtime.global_rank + epoch)))
        runtime.call("on_epoch_end", runtime, epoch=epoch)
    try:
        runtime.log("bad", torch.ones(2))
    except ArgumentError:
        (Path(root) / f"refused-rank{runtime.global_rank}").touch()
    total = runtime.all_reduce(torch.tensor(1.0), op="sum")
    runtime.log("processes", total, step=99)
    print(f"RESULT rank {runtime.global_rank} log_dir {runtime.logger.log_dir}")


@pytest.mark.distributed
def test_two_processes_only_rank_zero_writes(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    command = [sys.executable, "-m", "switchyard", "run", "--accelerator", "cpu"]
    command += ["--devices", "2", "--strategy", "ddp", __file__, str(root)]
    finished = run(
        command,
        timeout=TIMEOUT,
        log=tmp_path / "log",
        env=child_environment({"OMP_NUM_THREADS": "1"}),
    )
    assert finished.returncode == 0, f"{finished.describe()}:\n{finished.output[-6000:]}"
    versions = sorted(p.name for p in (root / "switchyard").iterdir())
    assert versions == ["version_0"], "one run, one folder: rank 1 created none"
    folder = root / "switchyard" / "version_0"
    assert rows(folder / "metrics.csv") == [
        {"step": "0", "rank_value": "0.0", "processes": ""},
        {"step": "1", "rank_value": "1.0", "processes": ""},
        {"step": "2", "rank_value": "2.0", "processes": ""},
        {"step": "99", "rank_value": "", "processes": "2.0"},
    ]
    assert json.loads((folder / "hparams.json").read_text()) == {"world_size": 2}
    made = sorted(p.name for p in root.iterdir() if p.is_file())
    assert made == [
        *(f"callback-rank{r}-epoch{e}" for r in (0, 1) for e in range(3)),
        "refused-rank0",
        "refused-rank1",
    ]


if __name__ == "__main__":
    main()
