"""No orphans, no hangs, restarts: the pieces, each on its own and fast (the whole jobs are in
tests/test_failures.py).

* Workers die with their launcher: the worker entry point asks the kernel for SIGKILL when its
  parent dies (``prctl(PR_SET_PDEATHSIG)``), ends at once when its parent is already gone, and
  elsewhere polls its parent; real processes, killed for real.
* Timeouts: ``Runtime(timeout=...)``, ``SWITCHYARD_TIMEOUT`` and ``switchyard run --timeout``
  are validated and reach the strategy, torchrun's rendezvous and the process group.
* A timed-out collective is explained by the ranks that never reached it (the census through
  the rendezvous store); the supervisor names them.
* Inconsistent cluster variables fail in selection, before any store or process group exists.
* Restarts: ``--max-restarts`` reaches torchrun; a restarted worker forgets the records of its
  previous attempt; the worker that failed first is the one killed from outside.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed as dist

from switchyard import Runtime
from switchyard.cli import main as cli_main
from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError
from switchyard.launchers.torchrun import (
    WORKER_ENTRY,
    first_failure,
    stall_report,
    torchrun_arguments,
)
from switchyard.launchers.worker import (
    DIAGNOSIS_PREFIX,
    EXIT_TIMES_VARIABLE,
    SUPERVISOR_VARIABLE,
)
from switchyard.parallel import (
    DEFAULT_TIMEOUT,
    TIMEOUT_VARIABLE,
    census,
    census_grace,
    is_timeout,
    parse_timeout,
)
from switchyard.testing.subprocesses import child_environment

STRESS = os.environ.get("SWITCHYARD_STRESS", "") not in ("", "0")

# -- the worker dies with its launcher ----------------------------------------------------

SLEEPER = """
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(60)
"""

PARENT = """
import os, subprocess, sys
env = dict(os.environ, {variable}=str(os.getpid()))
child = subprocess.Popen([sys.executable, *sys.argv[1:]], env=env)
child.wait()
"""


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _state(pid) in (None, "Z", "X"):
            return True
        time.sleep(0.02)
    return False


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text()):
        assert proc.poll() is None, "the parent ended early"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return int(path.read_text())


def _orphan_after_killing_the_parent(tmp_path: Path, child_args: list[str]) -> tuple[int, bool]:
    """Start a parent that runs ``python CHILD_ARGS... PIDFILE``, SIGKILL the parent once the
    child wrote its pid, and say whether the child was gone within 2 s."""
    pidfile = tmp_path / "child.pid"
    parent_code = PARENT.format(variable=SUPERVISOR_VARIABLE)
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code, *child_args, str(pidfile)],
        env=child_environment(),
        start_new_session=True,
    )
    try:
        child = _wait_for_file(pidfile, parent)
        parent.kill()
        parent.wait()
        gone = _gone_within(child, 2.0)
        if not gone:
            os.kill(child, signal.SIGKILL)
        return child, gone
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_when_its_launcher_is_sigkilled(tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    child, gone = _orphan_after_killing_the_parent(tmp_path, [WORKER_ENTRY, str(script)])
    assert gone, f"worker {child} outlived its launcher"


def test_without_the_entry_point_the_same_child_is_orphaned(tmp_path: Path) -> None:
    """The control: a plain ``python script.py`` child survives its parent's SIGKILL."""
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    _, gone = _orphan_after_killing_the_parent(tmp_path, [str(script)])
    assert not gone, "the control child died with its parent: the test above proves nothing"


def test_a_worker_whose_launcher_is_already_gone_ends_before_the_program(tmp_path: Path) -> None:
    """The race: the launcher died before the worker could ask to die with it, so the worker's
    parent is not the one that started it. It ends at once; the program never runs."""
    script = tmp_path / "program.py"
    script.write_text("open(__import__('sys').argv[1], 'w').write('ran')\n")
    marker = tmp_path / "ran"
    not_the_parent = os.getppid()  # a live process that is not the worker's parent
    env = child_environment({SUPERVISOR_VARIABLE: str(not_the_parent)})
    job = subprocess.run(
        [sys.executable, WORKER_ENTRY, str(script), str(marker)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert job.returncode == -signal.SIGKILL, job.stderr
    assert f"the launcher (pid {not_the_parent}) is gone" in job.stderr
    assert not marker.exists()


def test_where_the_kernel_cannot_be_asked_a_thread_watches_the_parent(tmp_path: Path) -> None:
    """The fallback of other POSIX systems (and of a Linux sandbox refusing prctl), run here."""
    program = tmp_path / "watched.py"
    program.write_text(
        textwrap.dedent(
            f"""
            import importlib.util, os, sys, time
            spec = importlib.util.spec_from_file_location("w", {WORKER_ENTRY!r})
            worker = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(worker)
            worker._watch_parent(os.getppid(), interval=0.05)
            open(sys.argv[1], "w").write(str(os.getpid()))
            time.sleep(60)
            """
        )
    )
    child, gone = _orphan_after_killing_the_parent(tmp_path, [str(program)])
    assert gone, f"process {child} outlived its parent"


FORKSERVER_PARENT = """
import sys, time
from switchyard.launchers import MultiprocessingLauncher


def sleep(pidfile):
    import os
    open(pidfile, "w").write(str(os.getpid()))
    time.sleep(60)


if __name__ == "__main__":
    launcher = MultiprocessingLauncher(
        "forkserver", num_processes=1, num_nodes=1, node_rank=0,
        main_address="127.0.0.1", main_port=None,
    )
    launcher.launch(sleep, sys.argv[1])
"""


WATCHER = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("w", sys.argv[1])
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
worker.die_with_process(int(sys.argv[2]))
open(sys.argv[3], "w").write(str(os.getpid()))
time.sleep(60)
"""


def test_a_process_watching_another_dies_with_it(tmp_path: Path) -> None:
    """What a forkserver process does (its parent is the fork server): it watches the launcher,
    which is not its parent, and ends when the launcher does."""
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pidfile = tmp_path / "watcher.pid"
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, WORKER_ENTRY, str(launcher.pid), str(pidfile)],
        env=child_environment(),
    )
    try:
        _wait_for_file(pidfile, watcher)
        assert watcher.poll() is None
        launcher.kill()
        launcher.wait()
        watcher.wait(timeout=5)
        assert watcher.returncode == -signal.SIGKILL
    finally:
        for proc in (launcher, watcher):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.skipif(not STRESS, reason="SWITCHYARD_STRESS=1 (imports torch in a fork server)")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_forkserver_process_dies_when_its_launcher_is_sigkilled(tmp_path: Path) -> None:
    """Its parent is the fork server, not the launcher: the fork server exits when the launcher
    is gone, and the process with it. (spawn and fork: tests/test_failures.py.)"""
    script = tmp_path / "forkserver_parent.py"
    script.write_text(FORKSERVER_PARENT)
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, str(script), str(pidfile)],
        env=child_environment(),
        start_new_session=True,
    )
    try:
        child = _wait_for_file(pidfile, parent, seconds=120)
        parent.kill()
        parent.wait()
        gone = _gone_within(child, 5.0)
        if not gone:
            os.kill(child, signal.SIGKILL)
        assert gone, f"forkserver process {child} outlived its launcher"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# -- restarts: what a worker of a new attempt forgets ---------------------------------------


def test_a_restarted_worker_forgets_its_previous_attempts_records(tmp_path: Path) -> None:
    folder = tmp_path / "exits"
    folder.mkdir()
    for name in ("0", "1", f"{DIAGNOSIS_PREFIX}0", f"{DIAGNOSIS_PREFIX}1"):
        (folder / name).write_text("stale")
    script = tmp_path / "noop.py"
    script.write_text("")
    base = {EXIT_TIMES_VARIABLE: str(folder), "TORCHELASTIC_MAX_RESTARTS": "3"}

    def worker(rank: str, restart: str) -> subprocess.CompletedProcess[str]:
        env = child_environment({**base, "RANK": rank, "TORCHELASTIC_RESTART_COUNT": restart})
        return subprocess.run(
            [sys.executable, WORKER_ENTRY, str(script)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    first = worker("1", "0")  # the first attempt has nothing to forget
    assert first.returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["0", "1", "diagnosis.0", "diagnosis.1"]
    second = worker("1", "2")
    assert second.returncode == 0
    assert "restarting" not in second.stderr  # only rank 0 says so
    assert sorted(p.name for p in folder.iterdir()) == ["0", "diagnosis.0"]  # its own only
    zero = worker("0", "2")
    assert "restarting the job (restart 2 of at most 3)" in zero.stderr
    assert list(folder.iterdir()) == []


def _failure(exitcode: int, timestamp: int = 100) -> SimpleNamespace:
    return SimpleNamespace(exitcode=exitcode, timestamp=timestamp)


def test_the_worker_killed_from_outside_failed_first(tmp_path: Path) -> None:
    # rank 1 SIGKILLed (no record); rank 0 failed after it, in the same second, with a record
    (tmp_path / "0").write_text("1000")
    assert first_failure({0: _failure(1), 1: _failure(-signal.SIGKILL)}, tmp_path) == (
        1,
        128 + signal.SIGKILL,
    )
    # ranks torchrun stopped with SIGTERM after the first failure do not count
    assert first_failure({0: _failure(1), 1: _failure(-signal.SIGTERM)}, tmp_path) == (0, 1)


def test_the_supervisor_names_the_stalled_rank(tmp_path: Path) -> None:
    assert stall_report(tmp_path) == ""
    record = {"rank": 0, "missing": [2], "what": "a collective", "timeout": 10}
    (tmp_path / f"{DIAGNOSIS_PREFIX}0").write_text(json.dumps(record))
    (tmp_path / f"{DIAGNOSIS_PREFIX}1").write_text(json.dumps({**record, "rank": 1}))
    (tmp_path / f"{DIAGNOSIS_PREFIX}3").write_text("not json")  # ignored
    report = stall_report(tmp_path)
    assert report.startswith("rank 2 stalled: it never reached a collective that ranks 0, 1")
    assert "for 10 s (the timeout)" in report
    (tmp_path / f"{DIAGNOSIS_PREFIX}0").write_text(json.dumps({**record, "missing": []}))
    (tmp_path / f"{DIAGNOSIS_PREFIX}1").write_text(json.dumps({**record, "missing": []}))
    assert "every rank was waiting" in stall_report(tmp_path)


def test_max_restarts_and_the_timeout_reach_torchrun() -> None:
    from torch.distributed.run import config_from_args, get_args_parser

    arguments = torchrun_arguments(
        2, 1, 0, "127.0.0.1", None, ["train.py"], max_restarts=3, timeout=timedelta(seconds=7.5)
    )
    config, _, _ = config_from_args(get_args_parser().parse_args(arguments))
    assert config.max_restarts == 3
    assert config.rdzv_configs["timeout"] == "8"  # whole seconds, rounded up
    assert config.rdzv_configs["join_timeout"] == "8"
    with pytest.raises(SelectionError, match=r"max_restarts=101 is not a number of restarts"):
        torchrun_arguments(2, 1, 0, "127.0.0.1", None, ["train.py"], max_restarts=101)


# -- timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, -1, 0.0, math.nan, math.inf, True, "10", 8 * 24 * 3600, timedelta(0), [5]],
)
def test_a_bad_timeout_is_refused_naming_the_argument(value: object) -> None:
    with pytest.raises(SelectionError, match=r"^timeout=.* is not a timeout: .*7 days"):
        Runtime(accelerator="cpu", strategy="ddp", devices=2, timeout=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "seconds"), [(5, 5.0), (2.5, 2.5), (timedelta(minutes=2), 120.0), (7 * 86400, 604800)]
)
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "fsdp"])
def test_runtime_timeout_reaches_the_strategy_and_its_launcher(
    value: object, seconds: float, strategy: str
) -> None:
    runtime = Runtime(accelerator="cpu", strategy=strategy, devices=2, timeout=value)  # type: ignore[arg-type]
    assert runtime.strategy.timeout == timedelta(seconds=seconds)  # type: ignore[attr-defined]
    launcher = runtime.strategy.launcher
    if hasattr(launcher, "timeout"):
        assert launcher.timeout == timedelta(seconds=seconds)  # type: ignore[union-attr]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "ddp_spawn"])
def test_the_default_timeout_is_ten_minutes_not_thirty(strategy: str) -> None:
    runtime = Runtime(accelerator="cpu", strategy=strategy, devices=2)
    assert runtime.strategy.timeout == DEFAULT_TIMEOUT == timedelta(minutes=10)  # type: ignore[attr-defined]


def test_the_timeout_variable_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from switchyard_ddp import DDPStrategy

    monkeypatch.setenv(TIMEOUT_VARIABLE, "12.5")
    assert Runtime(accelerator="cpu", strategy="ddp", devices=2).strategy.timeout == timedelta(  # type: ignore[attr-defined]
        seconds=12.5
    )
    # chosen in code: wins over the variable
    explicit = Runtime(accelerator="cpu", strategy=DDPStrategy(timeout=3), devices=2)
    assert explicit.strategy.timeout == timedelta(seconds=3)  # type: ignore[attr-defined]
    assert Runtime(accelerator="cpu", devices=2, timeout=4).strategy.timeout == timedelta(  # type: ignore[attr-defined]
        seconds=4
    )
    for bad in ("soon", "0", "-3", "nan", "1e99"):
        monkeypatch.setenv(TIMEOUT_VARIABLE, bad)
        with pytest.raises(SelectionError, match=rf"^SWITCHYARD_TIMEOUT='{bad}' is not a timeout"):
            Runtime(accelerator="cpu", strategy="ddp", devices=2)


def test_a_timeout_given_twice_is_refused() -> None:
    from switchyard_ddp import DDPStrategy

    with pytest.raises(SelectionError, match=r"given twice: Runtime\(timeout=5\) and "):
        Runtime(accelerator="cpu", strategy=DDPStrategy(timeout=7), devices=2, timeout=5)
    same = Runtime(accelerator="cpu", strategy=DDPStrategy(timeout=7), devices=2, timeout=7)
    assert same.strategy.timeout == timedelta(seconds=7)  # type: ignore[attr-defined]


def test_a_single_process_takes_a_timeout_it_does_not_need() -> None:
    Runtime(accelerator="cpu", devices=1, timeout=5)


def test_parse_timeout_reads_variables_and_flags() -> None:
    assert parse_timeout("30", "--timeout") == timedelta(seconds=30)
    assert parse_timeout(" 1.5 ", TIMEOUT_VARIABLE) == timedelta(seconds=1.5)
    with pytest.raises(SelectionError, match=r"^--timeout='abc' is not a timeout"):
        parse_timeout("abc", "--timeout")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--timeout", "0"], "--timeout='0' is not a timeout"),
        (["--timeout", "forever"], "--timeout='forever' is not a timeout"),
        (["--max-restarts", "-1"], "--max-restarts=-1 is not a number of restarts"),
        (["--max-restarts", "1000"], "--max-restarts=1000 is not a number of restarts"),
        (
            ["--max-restarts", "2", "--strategy", "ddp_spawn", "--devices", "2"],
            "torchrun's agent restarts the workers it starts, but strategy 'ddp_spawn'",
        ),
    ],
)
def test_switchyard_run_refuses_bad_timeouts_and_restarts(
    flags: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NODE_RANK", "0")  # restored after the test: cmd_run sets it
    script = tmp_path / "never_runs.py"
    script.write_text("raise SystemExit('ran')\n")
    assert cli_main(["run", "--accelerator", "cpu", *flags, str(script)]) == 2
    assert message in capsys.readouterr().err


# -- finding the stalled rank ---------------------------------------------------------------


def test_census_names_the_ranks_that_did_not_arrive() -> None:
    store = dist.HashStore()
    store.set("switchyard/census/1", "waiting")  # rank 1 timed out as well
    store.add("switchyard/census/count", 1)
    started = time.monotonic()
    assert census(store, 0, 3, grace=0.3) == [2]
    assert 0.3 <= time.monotonic() - started < 5
    # when everyone arrives, no one waits for the grace period
    store.set("switchyard/census/2", "waiting")
    store.add("switchyard/census/count", 1)
    started = time.monotonic()
    assert census(store, 0, 3, grace=30) == []
    assert time.monotonic() - started < 5


def test_census_of_an_unreachable_store_is_unknown() -> None:
    class Gone:
        def set_timeout(self, timeout: timedelta) -> None:
            raise RuntimeError("connection refused")

    assert census(Gone(), 0, 2, grace=0.1) is None


def test_census_grace_is_a_twentieth_of_the_timeout_within_2_and_30_s() -> None:
    assert census_grace(timedelta(seconds=5)) == 2.0
    assert census_grace(timedelta(seconds=100)) == 5.0
    assert census_grace(DEFAULT_TIMEOUT) == 30.0


def test_timeouts_are_told_from_other_distributed_errors() -> None:
    gloo = "[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv"
    assert is_timeout(RuntimeError(gloo))
    assert is_timeout(dist.DistStoreError("wait timeout after 5000ms, keys: /default_pg/0"))
    wrapped = ValueError("a user's error raised from the timeout")
    wrapped.__cause__ = RuntimeError(gloo)
    assert is_timeout(wrapped)
    assert not is_timeout(RuntimeError("[../gloo/transport/tcp/pair.cc:537] Connection reset"))
    assert not is_timeout(RuntimeError("the data loader's timeout ran out"))  # not a collective
    assert not is_timeout(ValueError("timeout=0 is not a timeout"))  # not torch.distributed's


# -- inconsistent cluster variables fail before any store -----------------------------------

_PREFIXES = ("SLURM", "LSB_", "JSM_", "OMPI_", "PMI_", "PMIX_", "MPI_", "TORCHELASTIC_", "PET_")
_NAMES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "NODE_RANK",
    "KUBERNETES_PORT",
)

TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "none",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "WORLD_SIZE": "2",
    "RANK": "1",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "0",
    "GROUP_WORLD_SIZE": "1",
}
SRUN = {
    "SLURM_JOB_ID": "77",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_NUM_NODES": "1",
    "SLURM_STEP_TASKS_PER_NODE": "2",
    "SLURM_NODELIST": "node1",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "0",
}
MPIRUN = {
    "OMPI_COMM_WORLD_SIZE": "2",
    "OMPI_COMM_WORLD_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
}
JSRUN = {
    "LSB_JOBID": "5",
    "LSB_HOSTS": "launch node1 node1",
    "JSM_NAMESPACE_SIZE": "2",
    "JSM_NAMESPACE_RANK": "1",
    "JSM_NAMESPACE_LOCAL_RANK": "1",
    "JSM_NAMESPACE_LOCAL_SIZE": "2",
}


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Mapping[str, str]], None]:
    for key in list(os.environ):
        if key.startswith(_PREFIXES) or key in _NAMES:
            monkeypatch.delenv(key)

    def apply(variables: Mapping[str, str]) -> None:
        for key, value in variables.items():
            monkeypatch.setenv(key, value)

    return apply


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({**TORCHRUN, "RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2 (ranks are 0..1)"),
        ({**TORCHRUN, "RANK": "7", "LOCAL_RANK": "1"}, "RANK=7 is not below WORLD_SIZE=2"),
        ({**TORCHRUN, "LOCAL_RANK": "2"}, "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2"),
        ({**TORCHRUN, "GROUP_RANK": "1"}, "GROUP_RANK=1 is not below GROUP_WORLD_SIZE=1"),
        ({**SRUN, "SLURM_PROCID": "2"}, "SLURM_PROCID=2 is not below SLURM_STEP_NUM_TASKS=2"),
        ({**SRUN, "SLURM_LOCALID": "5"}, "SLURM_LOCALID=5 is not below this node's count in"),
        ({**SRUN, "SLURM_NODEID": "1"}, "SLURM_NODEID=1 is not below SLURM_STEP_NUM_NODES=1"),
        (
            {**MPIRUN, "OMPI_COMM_WORLD_RANK": "3"},
            "OMPI_COMM_WORLD_RANK=3 is not below OMPI_COMM_WORLD_SIZE=2",
        ),
        (
            {**MPIRUN, "OMPI_COMM_WORLD_LOCAL_RANK": "2"},
            "OMPI_COMM_WORLD_LOCAL_RANK=2 is not below OMPI_COMM_WORLD_LOCAL_SIZE=2",
        ),
        (
            {**JSRUN, "JSM_NAMESPACE_RANK": "2"},
            "JSM_NAMESPACE_RANK=2 is not below JSM_NAMESPACE_SIZE=2",
        ),
        (
            {**JSRUN, "JSM_NAMESPACE_LOCAL_RANK": "4"},
            "JSM_NAMESPACE_LOCAL_RANK=4 is not below JSM_NAMESPACE_LOCAL_SIZE=2",
        ),
        (
            {"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2", "RANK": "1"},
            "LOCAL_RANK=3 is not below LOCAL_WORLD_SIZE=2",
        ),
    ],
)
def test_inconsistent_cluster_variables_fail_before_any_store(
    set_env: Callable[[Mapping[str, str]], None], variables: dict[str, str], message: str
) -> None:
    set_env(variables)
    started = time.monotonic()
    with pytest.raises(SelectionError) as info:
        Runtime(accelerator="cpu", strategy="ddp", devices=2)
    assert message in str(info.value)
    assert "inconsistent" in str(info.value)
    assert time.monotonic() - started < 5
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    ("variables", "name"),
    [
        ({**TORCHRUN, "RANK": "-1"}, "RANK"),
        ({**SRUN, "SLURM_PROCID": "-1"}, "SLURM_PROCID"),
        ({**MPIRUN, "OMPI_COMM_WORLD_RANK": "-2"}, "OMPI_COMM_WORLD_RANK"),
    ],
)
def test_a_negative_rank_fails_naming_the_variable(
    set_env: Callable[[Mapping[str, str]], None], variables: dict[str, str], name: str
) -> None:
    set_env(variables)
    with pytest.raises(SelectionError, match=rf"{name}=.?-\d"):
        Runtime(accelerator="cpu", strategy="ddp", devices=2)
    assert not dist.is_initialized()


class _Inconsistent(ClusterEnvironment):
    """A third-party environment whose ranks do not fit together."""

    @classmethod
    def detect(cls) -> bool:
        return False

    @property
    def creates_processes_externally(self) -> bool:
        return True

    main_address = "127.0.0.1"
    main_port = 1  # never contacted

    def world_size(self) -> int:
        return 2

    def set_world_size(self, size: int) -> None:
        pass

    def global_rank(self) -> int:
        return 5

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return 1

    def node_rank(self) -> int:
        return 0


def test_any_environment_s_inconsistent_ranks_fail_before_the_process_group(
    set_env: Callable[[Mapping[str, str]], None],
) -> None:
    set_env({})
    runtime = Runtime(accelerator="cpu", strategy="ddp", devices=2, environment=_Inconsistent())
    started = time.monotonic()
    with pytest.raises(SelectionError, match=r"_Inconsistent reports global rank 5 \(the ranks"):
        runtime.launch()
    assert time.monotonic() - started < 5
    assert not dist.is_initialized()
