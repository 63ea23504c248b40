"""SIGKILL during saves loses no checkpoint and leaks nothing, under every strategy of
checkpoint_scripts/strategies.py (single files from one process or from rank zero of two;
sharded directories from two FSDP processes).

Each trial starts a job (real processes, forked by checkpoint_scripts/kill_zygote.py, saving
through ``runtime.save`` after every training step), waits for its first save, checks that the
previous trial's kill left nothing behind once that save is done (no temporary file or directory
of the checkpoint's name, nothing partial inside it), then lets it save in a loop and SIGKILLs
its processes at a random moment (every other trial a moment inside a save: after one began,
within the time the first one took; random order and random gaps between ranks). The checkpoint is
then loaded in this process, with no strategy (``switchyard.checkpoint.load``, which also puts
back a directory left between the two renames of a replace): its step must be the last completed
save's or the one after (complete but not yet reported), and sums stored with it must match the
loaded tensors (one consistent save, not a mix). The last trial only saves once, to check the
last kill's leftovers.

Trials: ``STRATEGIES[name]["kills"]`` gives (CI, stress) counts; ``SWITCHYARD_STRESS=1`` runs the
stress counts, ``SWITCHYARD_KILL_TRIALS=N`` exactly N per strategy, ``SWITCHYARD_KILL_SEED``
fixes the random moments. With ``SWITCHYARD_REPORT_DIR`` set, the figures of each strategy are
written there as ``checkpoint-kills-NAME.json``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switchyard import checkpoint
from switchyard.testing.subprocesses import child_environment

SCRIPTS = Path(__file__).parent / "checkpoint_scripts"
START_TIMEOUT = 120.0


def _load_strategies() -> Any:
    spec = importlib.util.spec_from_file_location("strategies", SCRIPTS / "strategies.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_strategies = _load_strategies()
STRATEGIES: dict[str, dict[str, Any]] = _strategies.STRATEGIES


def _params(names: list[str]) -> list[Any]:
    """The strategies, those this environment lacks skipped (DeepSpeed: scripts/test-deepspeed)."""
    return [
        pytest.param(
            name, marks=[pytest.mark.skip(why)] if (why := _strategies.missing(name)) else []
        )
        for name in names
    ]


DEEPSPEED_FILES = {
    "switchyard-deepspeed.json",
    "state.pt",
    "engine0",
    "zero_to_fp32.py",
    "zero_to_torch.py",  # DeepSpeed 0.19 writes its consolidation script under both names
}
"""What a DeepSpeed checkpoint directory holds (docs/deepspeed.md, "Checkpoints")."""
# read when the module is imported: conftest clears SWITCHYARD_* around every test
STRESS = os.environ.get("SWITCHYARD_STRESS") == "1"
TRIALS = os.environ.get("SWITCHYARD_KILL_TRIALS")
SEED = os.environ.get("SWITCHYARD_KILL_SEED")
REPORT_DIR = os.environ.get("SWITCHYARD_REPORT_DIR")


def _trials(name: str) -> int:
    if TRIALS:
        return int(TRIALS)
    ci, stress = STRATEGIES[name]["kills"]
    return stress if STRESS else ci


class Zygote:
    """The forking parent of the jobs (checkpoint_scripts/kill_zygote.py)."""

    def __init__(self, logs: Path) -> None:
        self.stderr = (logs / "zygote.err").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "kill_zygote.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=SCRIPTS,
            env=child_environment({"OMP_NUM_THREADS": "1"}),
            start_new_session=True,
        )
        self._read(START_TIMEOUT)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stderr.flush()
            err = Path(self.stderr.name).read_text()[-3000:]
            pytest.fail(f"the zygote did not answer within {timeout:.0f} s:\n{err}")
        return json.loads(line)

    def ask(self, request: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # it ends at the end of its input
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.stderr.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    forker = Zygote(tmp_path_factory.mktemp("zygote"))
    try:
        yield forker
    finally:
        forker.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _saves(log: Path) -> list[tuple[int, float]]:
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [
        (int(words[1]), float(words[2]))
        for words in (line.split() for line in lines)
        if words and words[0] == "saved"
    ]


def _begun(log: Path) -> int:
    """The step of the last save rank zero began."""
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return 0
    begun = [int(w[1]) for w in (line.split() for line in lines) if w and w[0] == "begin"]
    return begun[-1] if begun else 0


class Job:
    def __init__(self, zygote: Zygote, strategy: str, folder: Path, name: str, **spec: Any):
        self.zygote = zygote
        self.world = STRATEGIES[strategy]["devices"]
        self.log = folder / f"{name}.log"
        self.go = folder / f"{name}.go"
        request = {
            "cmd": "start",
            "strategy": strategy,
            "world": self.world,
            "log": str(self.log),
            "go": str(self.go),
            "port": _free_port(),
            "mode": "loop",
            **spec,
        }
        self.pids: list[int] = zygote.ask(request)["pids"]

    def saves(self) -> list[tuple[int, float]]:
        return _saves(Path(f"{self.log}.0"))

    def errors(self) -> str:
        return "\n".join(
            Path(f"{self.log}.{rank}.err").read_text()[-3000:]
            for rank in range(self.world)
            if Path(f"{self.log}.{rank}.err").exists()
        )

    def wait_for_first_save(self) -> float:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.saves():
            if time.monotonic() > deadline or not all(_alive(pid) for pid in self.pids):
                self.kill()
                pytest.fail(f"the job made no save:\n{self.errors()}")
            time.sleep(0.005)
        return self.saves()[0][1]

    def kill(self, rng: random.Random | None = None, gap: float = 0.0) -> dict[str, str]:
        order = list(self.pids)
        if rng is not None:
            rng.shuffle(order)
        for i, pid in enumerate(order):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if rng is not None and i < len(order) - 1:
                time.sleep(rng.uniform(0, gap))
        return self.reap()

    def reap(self) -> dict[str, str]:
        return self.zygote.ask({"cmd": "reap", "pids": self.pids})["status"]


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # the zygote's child, not ours: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        stat = Path(f"/proc/{pid}/stat")
        return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")
    return not done


def _sums(loaded: dict[str, Any]) -> list[float]:
    params = sum(float(v.double().sum()) for v in loaded["model"].values())
    if "optimizer" not in loaded:  # DeepSpeed's: its flat shards are not loaded
        return [params]
    moments = sum(float(s["exp_avg"].double().sum()) for s in loaded["optimizer"]["state"].values())
    return [params, moments]


def _consistent(loaded: dict[str, Any]) -> bool:
    return all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
        for a, b in zip(_sums(loaded), loaded["check"], strict=True)
    )


def _leftovers(folder: Path, path: Path) -> list[str]:
    """Everything in ``folder`` besides the checkpoint, and anything inside a checkpoint
    directory besides its files."""
    extra = [p.name for p in folder.iterdir() if p.name != path.name]
    if path.is_dir():
        extra += [
            f"{path.name}/{p.name}"
            for p in path.iterdir()
            if not (
                p.name in (".metadata", "meta.pt")
                or p.name.endswith(".distcp")
                or (p.name in DEEPSPEED_FILES and (path / "switchyard-deepspeed.json").is_file())
            )
        ]
        engine = path / "engine0"
        if engine.is_dir():
            extra += [
                f"{path.name}/engine0/{p.name}"
                for p in engine.iterdir()
                if not (p.is_file() and p.name.endswith("_states.pt"))
            ]
    return sorted(extra)


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", _params(list(STRATEGIES)))
def test_sigkill_during_saves_loses_no_checkpoint_and_leaks_nothing(
    strategy: str, zygote: Zygote, tmp_path: Path
) -> None:
    trials = _trials(strategy)
    seed = int(SEED) if SEED else random.randrange(2**32)
    rng = random.Random(seed)
    saves, logs = tmp_path / "saves", tmp_path / "logs"
    saves.mkdir()
    logs.mkdir()
    path = saves / "ckpt"
    figures: dict[str, Any] = {
        "strategy": strategy,
        "processes": STRATEGIES[strategy]["devices"],
        "seed": seed,
        "kill_trials": 0,
        "checkpoints_lost": 0,
        "files_leaked_after_next_save": 0,
        "kills_that_left_temporaries": 0,
        "kills_between_the_renames_recovered": 0,
        "survivor_exits": {},
    }
    problems: list[str] = []
    for trial in range(trials + 1):
        final = trial == trials
        mode = "once" if final else "loop"
        job = Job(zygote, strategy, logs, f"job{trial}", path=str(path), mode=mode)
        duration = job.wait_for_first_save()
        leaked = _leftovers(saves, path)
        if leaked:
            figures["files_leaked_after_next_save"] += len(leaked)
            problems.append(f"trial {trial}: after the next save, left: {leaked}")
        job.go.touch()
        if final:
            status = job.reap()
            assert set(status.values()) == {"exit 0"}, job.errors()
            break
        if trial % 2:
            # inside a save: after one begins, within the time the first one took
            deadline = time.monotonic() + START_TIMEOUT
            while _begun(Path(f"{job.log}.0")) < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, duration))
        else:
            time.sleep(rng.uniform(0, 4 * duration))  # any moment of the loop
        status = job.kill(rng, gap=duration)
        for value in status.values():
            figures["survivor_exits"][value] = figures["survivor_exits"].get(value, 0) + 1
        figures["kill_trials"] += 1
        last = job.saves()[-1][0]
        left = checkpoint.temporaries(path)
        figures["kills_that_left_temporaries"] += bool(left)
        in_gap = not path.exists()
        try:
            loaded = checkpoint.load(path)
        except Exception as error:
            figures["checkpoints_lost"] += 1
            problems.append(f"trial {trial}: no checkpoint loads after the kill: {error}")
            continue
        figures["kills_between_the_renames_recovered"] += in_gap
        if loaded["step"] not in (last, last + 1) or not _consistent(loaded):
            figures["checkpoints_lost"] += 1
            problems.append(
                f"trial {trial}: last completed save {last}, loaded step {loaded['step']}, "
                f"consistent: {_consistent(loaded)}"
            )
    print(f"checkpoint kills {strategy}: {json.dumps(figures)}")
    if REPORT_DIR:
        report = Path(REPORT_DIR) / f"checkpoint-kills-{strategy}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(figures, indent=1))
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)
    assert figures["kill_trials"] == trials


SHARDED = [
    name
    for name, spec in STRATEGIES.items()
    if spec["directory"] and name not in ("deepspeed_stage_1", "deepspeed_stage_2")
]
"""Strategies whose checkpoints are directories, replaced by two renames (DeepSpeed's save is
the same code under every ZeRO stage: stage 3's cases cover it)."""


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", _params(SHARDED))
@pytest.mark.parametrize("point", ["after_aside", "after_complete"])
def test_a_kill_at_the_renames_of_a_replace_is_recovered(
    strategy: str, point: str, zygote: Zygote, tmp_path: Path
) -> None:
    """SIGKILL exactly between the two renames (``after_aside``: nothing under the name) or just
    before them (``after_complete``): the load gets a complete checkpoint, the next save leaves
    nothing behind."""
    saves, logs = tmp_path / "saves", tmp_path / "logs"
    saves.mkdir()
    logs.mkdir()
    path = saves / "ckpt"
    first = Job(zygote, strategy, logs, "job-first", path=str(path), mode="once", tag="first")
    first.wait_for_first_save()
    first.go.touch()
    assert set(first.reap().values()) == {"exit 0"}, first.errors()

    killed = Job(zygote, strategy, logs, "job-killed", path=str(path), tag="second", inject=point)
    killed.go.touch()
    deadline = time.monotonic() + START_TIMEOUT
    while _alive(killed.pids[0]):  # rank zero kills itself at the point
        assert time.monotonic() < deadline, killed.errors()
        time.sleep(0.01)
    killed.kill()  # its peers wait in a collective
    kinds = sorted(kind for kind, _ in checkpoint.temporaries(path))
    if point == "after_aside":
        assert not path.exists()
        assert kinds == ["new", "old"]
    else:
        assert path.is_dir()
        assert kinds == ["new"]

    loaded = checkpoint.load(path)
    # the complete new one when the name was empty; the old one while it was still in place
    assert loaded["tag"] == ("second" if point == "after_aside" else "first")
    assert _consistent(loaded)
    assert path.is_dir()

    last = Job(zygote, strategy, logs, "job-last", path=str(path), mode="once", tag="third")
    last.wait_for_first_save()
    assert _leftovers(saves, path) == []
    last.go.touch()
    assert set(last.reap().values()) == {"exit 0"}, last.errors()
    assert checkpoint.load(path)["tag"] == "third"
