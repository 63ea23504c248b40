"""Lightning Fabric's image-classifier and language-model examples, migrated to switchyard.

Each example is kept as a pair in this folder: ``NAME_fabric.py`` (Lightning Fabric) and
``NAME_switchyard.py``, which differ only in their imports and in the line that creates
``fabric`` (checked here first). The switchyard halves run for real, on the CPU, in one process
and (the image classifier) in two; where the Lightning Fabric environment made by
``scripts/engine-env fabric`` exists, the Fabric halves run there too, with the same seed and
data, and the two must print the same lines and log the same losses, bit for bit.

Why exact equality: both environments hold the same torch build (checked), every process runs
with one thread (``OMP_NUM_THREADS=1``, so no reduction order depends on scheduling), the seed
and data are the same, and for ``32-true`` on one device neither library is meant to touch the
computation. Any difference is then something one of them does that the other does not (a
cast, another order of random draws, another sampler), which is what a migrating user would
need to know about, so no tolerance hides it.

What a Fabric user must change beyond that, and what switchyard lacks, is listed in
``docs/migrating-from-fabric.md``; :data:`KNOWN_API_DIFFERENCES` holds the API part of that
list and is checked against Fabric's real signatures.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import fcntl
import json
import math
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from switchyard import Runtime
from switchyard.testing.subprocesses import child_environment

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
RUN_LIMIT = 120.0
"""Seconds any one run may take (they take a few); past it the test fails instead of hanging."""

# a few steps each: 2 epochs of 10 batches of 32 (image classifier); 2 epochs of 5 batches of 20
# with 3 validation batches, over a vocabulary of 1000 (language model)
ARGS = {
    "image_classifier": [
        "--epochs", "2", "--batch-size", "32", "--train-samples", "320", "--test-samples", "160",
        "--log-interval", "5", "--save-model",
    ],
    "language_model": [
        "--max-epochs", "2", "--samples", "220", "--holdout", "60", "--vocab-size", "1000",
    ],
}  # fmt: skip
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

KNOWN_API_DIFFERENCES: dict[str, str] = {
    # collectives run on the strategy's one process group; gathered tensors carry no gradient
    "all_gather": "lacks ['group', 'sync_grads']",
    # the reduction is op= (reduce_op= in Fabric)
    "all_reduce": "lacks ['group']",
    # seeding prints nothing
    "seed_everything": "lacks ['verbose']",
    # engine-built schedulers are returned by setup(model) instead
    "setup": "lacks ['scheduler']",
    # subclass-and-override run(): launch(function) does it
    "run": "missing",
    # deprecated in Fabric for init_module()
    "sharded_model": "missing",
}
"""Fabric's public members that switchyard's Runtime lacks, or whose parameters (by name) it
does not take, as ``docs/migrating-from-fabric.md`` lists them."""


@dataclass
class Run:
    folder: Path
    stdout: str
    stderr: str

    def metrics(self, name: str) -> list[dict[str, str]]:
        """The rows of the one ``metrics.csv`` the CSV logger wrote under ``logs/NAME``."""
        files = sorted((self.folder / "logs" / name).rglob("metrics.csv"))
        assert len(files) == 1, (
            f"expected one metrics.csv under logs/{name}, found {files}\n{self.stderr[-2000:]}"
        )
        with files[0].open(newline="") as handle:
            return list(csv.DictReader(handle))


def series(rows: list[dict[str, str]], column: str) -> dict[int, float]:
    """``{step: value}`` of the rows where ``column`` was logged."""
    return {int(row["step"]): float(row[column]) for row in rows if row.get(column)}


def script(name: str, side: str) -> Path:
    return HERE / f"{name}_{side}.py"


def run_switchyard(
    name: str, folder: Path, *, devices: int = 1, extra: list[str] | None = None
) -> Run:
    folder.mkdir(parents=True)
    program = [str(script(name, "switchyard")), *ARGS[name], *(extra or [])]
    launcher = ["-m", "switchyard", "run", "--accelerator", "cpu", "--devices", str(devices)]
    command = [sys.executable, *(launcher if devices > 1 else []), *program]
    done = subprocess.run(
        command,
        cwd=folder,
        env=child_environment(THREADS),
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT,
        check=False,
    )
    assert done.returncode == 0, (
        f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
        f"{done.stderr[-3000:]}"
    )
    return Run(folder, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def switchyard_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("switchyard")
    return {name: run_switchyard(name, root / name) for name in ARGS}


# -- the Lightning Fabric environment ----------------------------------------------------------


def fabric_environment() -> tuple[Path | None, str]:
    """The python of a complete Fabric environment of ``scripts/engine-env fabric`` (this
    checkout's first) whose torch is this one, or ``None`` and why not."""
    cache = Path(os.environ.get("SWITCHYARD_CACHE", Path.home() / ".cache" / "switchyard"))
    found = [
        venv
        for venv in sorted((cache / "envs").glob("fabric-*"), key=lambda p: -p.stat().st_mtime)
        if (venv / ".complete").exists() and (venv / "bin" / "python").exists()
    ]
    found.sort(key=lambda venv: _root_of(venv) != str(ROOT))
    if not found:
        return None, (
            f"no Lightning Fabric environment under {cache / 'envs'}: make it with "
            "scripts/engine-env fabric (it installs lightning on this torch)"
        )
    ours = f"torch-{torch.__version__}.dist-info"
    for venv in found:
        if list(venv.glob(f"lib/python*/site-packages/{ours}")) and list(
            venv.glob("lib/python*/site-packages/lightning-*.dist-info")
        ):
            return venv / "bin" / "python", ""
    return None, (
        f"the Fabric environments {[str(v) for v in found]} do not hold lightning on this torch "
        f"({torch.__version__}), which an exact comparison needs: rebuild with "
        "scripts/engine-env fabric"
    )


def _root_of(venv: Path) -> str:
    try:
        return (venv / ".root").read_text().strip()
    except OSError:
        return ""


@dataclass
class FabricSide:
    process: subprocess.Popen[bytes] | None
    folder: Path
    skip_reason: str

    def result(self) -> tuple[dict[str, Run], dict[str, Any]]:
        """The Fabric runs and Fabric's API description, once the background job is done."""
        if self.process is None:
            pytest.skip(self.skip_reason)
        try:
            self.process.wait(timeout=RUN_LIMIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the Fabric side ran past {RUN_LIMIT:.0f} s")
        output = (self.folder / "output.txt").read_text()
        runs = {}
        for name in ARGS:
            folder = self.folder / name
            error = folder / "error.txt"
            assert not error.exists(), f"the Fabric {name} failed:\n{error.read_text()}"
            runs[name] = Run(folder, (folder / "stdout.txt").read_text(), output)
        assert self.process.returncode == 0, output[-3000:]
        return runs, json.loads((self.folder / "api.json").read_text())


@pytest.fixture(scope="module", autouse=True)
def fabric_side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricSide]:
    """Starts the Fabric runs in the background as the module starts, so that they overlap the
    switchyard runs (each process uses one thread)."""
    folder = tmp_path_factory.mktemp("fabric")
    with contextlib.ExitStack() as stack:
        busy = _hold_build_lock(stack)
        python, reason = fabric_environment()
        if busy or python is None:
            yield FabricSide(None, folder, busy or reason)
            return
        yield from _start_fabric_side(python, folder)


def _hold_build_lock(stack: contextlib.ExitStack) -> str:
    """Share the lock ``scripts/engine-env fabric`` builds under, so that no build replaces (and
    deletes) the environment while the tests use it. Returns ``""`` once the lock is held (or
    where no build ever ran), or, while a build holds it, the reason to skip."""
    cache = Path(os.environ.get("SWITCHYARD_CACHE", Path.home() / ".cache" / "switchyard"))
    lock = cache / "envs" / "fabric.lock"
    if not lock.exists():
        return ""
    handle = stack.enter_context(lock.open("rb"))
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return f"scripts/engine-env fabric is building the Lightning Fabric environment ({lock})"
    stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
    return ""


def _start_fabric_side(python: Path, folder: Path) -> Iterator[FabricSide]:
    runs = []
    for name in ARGS:
        (folder / name).mkdir()
        runs.append(
            {"script": str(script(name, "fabric")), "cwd": str(folder / name), "args": ARGS[name]}
        )
    jobs = folder / "jobs.json"
    jobs.write_text(json.dumps({"api": str(folder / "api.json"), "runs": runs}))
    # a file, not a pipe: nothing reads the output until the comparison, and a full pipe
    # would stop the process
    with (folder / "output.txt").open("w") as output:
        process = subprocess.Popen(
            [str(python), str(HERE / "fabric_side.py"), str(jobs)],
            env=child_environment(THREADS, import_path=False, plugin_switches=False),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield FabricSide(process, folder, "")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- the pairs differ only in imports and constructor --------------------------------------------

IMPORT = re.compile(r"^(import |from \S+ import )")
CONSTRUCTOR = re.compile(r"^\s*fabric = ")


@pytest.mark.parametrize("name", list(ARGS))
def test_the_pair_differs_only_in_imports_and_the_constructor(name: str) -> None:
    fabric = script(name, "fabric").read_text().splitlines()
    ours = script(name, "switchyard").read_text().splitlines()
    changed = [
        line
        for line in difflib.ndiff(fabric, ours)
        if line[:2] in ("- ", "+ ") and line[2:].strip()
    ]
    others = [
        line for line in changed if not (IMPORT.match(line[2:]) or CONSTRUCTOR.match(line[2:]))
    ]
    assert not others, f"{name}: lines changed besides imports and the constructor: {others}"
    constructors = [line for line in changed if CONSTRUCTOR.match(line[2:])]
    assert [line[:2] for line in constructors] == ["- ", "+ "], constructors
    # the Fabric half really is Fabric, the other really is switchyard
    assert any("lightning" in line for line in changed if line.startswith("- "))
    assert not any("lightning" in line for line in ours if IMPORT.match(line))


# -- the switchyard halves ---------------------------------------------------------------------


def test_image_classifier_trains_logs_and_saves(switchyard_runs: dict[str, Run]) -> None:
    run = switchyard_runs["image_classifier"]
    rows = run.metrics("image_classifier")
    train = series(rows, "train_loss")
    # every step was logged, once: 2 epochs of 10 batches
    assert sorted(train) == list(range(20))
    assert all(math.isfinite(v) for v in train.values())
    assert sum(train[s] for s in range(17, 20)) < sum(train[s] for s in range(3))
    test_loss, test_acc = series(rows, "test_loss"), series(rows, "test_acc")
    assert sorted(test_loss) == sorted(test_acc) == [10, 20]
    assert test_loss[20] < test_loss[10]
    assert 0.0 <= test_acc[10] <= test_acc[20] <= 1.0
    # printed once per epoch, with the logged values
    printed = re.findall(r"Test set: Average loss: (\S+), Accuracy: \((\d+)%\)", run.stdout)
    assert printed == [(f"{test_loss[s]:.4f}", f"{100 * test_acc[s]:.0f}") for s in (10, 20)]
    # fabric.save("mnist_cnn.pt", model.state_dict()) wrote what torch.load reads back as that
    saved = torch.load(run.folder / "mnist_cnn.pt", weights_only=True)
    assert {"conv1.weight", "fc2.bias"} <= set(saved), sorted(saved)
    assert saved["fc2.bias"].shape == (10,)


def test_language_model_trains_and_logs(switchyard_runs: dict[str, Run]) -> None:
    run = switchyard_runs["language_model"]
    rows = run.metrics("language_model")
    train = series(rows, "train_loss")
    # 2 epochs of 5 batches (100 training samples, batch 20)
    assert sorted(train) == list(range(10))
    assert all(math.isfinite(v) for v in train.values())
    # the first loss is that of a uniform guess over the vocabulary, then it falls
    assert abs(train[0] - math.log(1000)) < 0.5
    assert sum(train[s] for s in range(7, 10)) < sum(train[s] for s in range(3))
    val = series(rows, "val_loss")
    assert sorted(val) == [5, 10]
    assert val[10] < val[5]
    assert series(rows, "epoch") == {5: 0.0, 10: 1.0}
    printed = re.findall(r"val loss (\S+)", run.stdout)
    assert printed == [f"{val[s]:.4f}" for s in (5, 10)]
    assert run.stdout.count("Validating ...") == 2


@pytest.mark.distributed
def test_image_classifier_in_two_processes(tmp_path: Path) -> None:
    """``switchyard run --devices 2`` (DDP over gloo), as ``fabric run --devices 2`` would."""
    # a later --epochs wins over the one in ARGS
    run = run_switchyard("image_classifier", tmp_path / "ddp", devices=2, extra=["--epochs", "1"])
    # each process trains on half of the 320 samples: 5 batches, printing after the 1st and 5th
    assert run.stdout.count("Train Epoch: 1 [") == 4, run.stdout
    # the result is printed once, and logged once (by rank zero), for the whole test set
    printed = re.findall(r"Test set: Average loss: (\S+), Accuracy: \((\d+)%\)", run.stdout)
    assert len(printed) == 1, run.stdout
    rows = run.metrics("image_classifier")
    assert sorted(series(rows, "train_loss")) == list(range(5))
    test_loss = series(rows, "test_loss")
    assert list(test_loss) == [5]
    assert math.isfinite(test_loss[5])
    assert printed[0][0] == f"{test_loss[5]:.4f}"
    # fabric.save under DDP: one file, written by rank zero, with the unwrapped module's keys
    saved = torch.load(run.folder / "mnist_cnn.pt", weights_only=True)
    assert {"conv1.weight", "fc2.bias"} <= set(saved), sorted(saved)


# -- against Lightning Fabric itself -----------------------------------------------------------


@pytest.mark.parametrize("name", list(ARGS))
def test_same_losses_as_lightning_fabric(
    name: str, fabric_side: FabricSide, request: pytest.FixtureRequest
) -> None:
    fabric_runs, _ = fabric_side.result()
    # asked for only now: without the Fabric environment, the switchyard runs are not started
    switchyard_runs: dict[str, Run] = request.getfixturevalue("switchyard_runs")
    theirs, ours = fabric_runs[name], switchyard_runs[name]
    assert ours.stdout == theirs.stdout
    # each script logs under logs/<its name>
    their_rows, our_rows = theirs.metrics(name), ours.metrics(name)
    columns = {column for row in their_rows for column in row} - {"step"}
    assert columns == {column for row in our_rows for column in row} - {"step"}
    for column in sorted(columns):
        assert series(our_rows, column) == series(their_rows, column), column
    if name == "image_classifier":
        their_model = torch.load(theirs.folder / "mnist_cnn.pt", weights_only=True)
        our_model = torch.load(ours.folder / "mnist_cnn.pt", weights_only=True)
        assert list(our_model) == list(their_model)
        assert all(torch.equal(our_model[k], their_model[k]) for k in their_model)


def test_known_api_differences_from_fabric(fabric_side: FabricSide) -> None:
    """Every public Fabric member and parameter exists on Runtime, except the known ones."""
    _, fabric_api = fabric_side.result()
    describe = runpy.run_path(str(HERE / "fabric_side.py"))["describe"]
    ours = describe(Runtime)
    found = {}
    for member, signature in fabric_api.items():
        if member not in ours:
            found[member] = "missing"
        elif isinstance(signature, list) and isinstance(ours[member], list):
            lacking = [p for p in signature if p not in ours[member]]
            if lacking:
                found[member] = f"lacks {lacking}"
    assert found == KNOWN_API_DIFFERENCES, (
        f"Runtime's differences from Fabric are now {found}; update KNOWN_API_DIFFERENCES and "
        "the table in docs/migrating-from-fabric.md"
    )
