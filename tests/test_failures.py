"""The hang and orphan suite: real 2-process jobs over gloo whose rank raises, is SIGKILLed or
stalls, or whose launcher is SIGKILLed; and a job restarted by ``switchyard run --max-restarts``
that resumes from its checkpoint with the uninterrupted run's losses.

Every job must end within a bound, with a non-zero status, naming the rank that failed or
stalled; no process of the job may survive it (each job's processes carry a token in their
environment, and ``/proc`` is scanned for it afterwards: every survivor is an orphan). The exit
time of each scenario and the worst are reported at the end of the module.

The scenarios run for every installed distributed strategy (:data:`STRATEGIES`, discovered from
the registry, so a strategy added later runs them too). CI runs a subset (:data:`CI_CASES`,
DDP); ``SWITCHYARD_STRESS=1`` runs every strategy and every way of launching,
``SWITCHYARD_STRESS_TRIALS`` (default 1) trials of each. See docs/security.md, "Suites".
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from switchyard.parallel import census_grace
from switchyard.registry import default_registry
from switchyard.testing.subprocesses import child_environment

pytestmark = pytest.mark.distributed

SCRIPTS = Path(__file__).parent / "scripts"
FAILURES = SCRIPTS / "failures.py"
RESUME = SCRIPTS / "resume.py"

TIMEOUT = 5.0
"""``Runtime(timeout=...)`` of the jobs: how long the peers of a stalled rank wait."""

START_LIMIT = 120.0
"""How long a job may take to reach its third step (three processes import torch on 2 cores)."""

FAILURE_BOUND = 20.0
"""Seconds from a rank's failure (raise, SIGKILL) to the end of the job."""

STALL_BOUND = TIMEOUT + census_grace(timedelta(seconds=TIMEOUT)) + 20.0
"""Seconds from a rank's stall to the end of the job: the timeout, the census of the waiting
ranks, then the launcher's stop."""

ORPHAN_BOUND = 5.0
"""Seconds from the launcher's SIGKILL until no process of the job is left."""

STRESS = os.environ.get("SWITCHYARD_STRESS", "") not in ("", "0")
TRIALS = int(os.environ.get("SWITCHYARD_STRESS_TRIALS", "1")) if STRESS else 1


def distributed_strategies() -> dict[str, str]:
    """Every installed strategy that runs one process per device, with its start method
    (``"popen"`` when torchrun starts the processes): the one list the suite runs over."""
    strategies = {}
    for registration in default_registry().registrations("strategy"):
        entry = registration.entry
        accelerators = entry.accelerators  # type: ignore[attr-defined]
        if entry.distributed and (accelerators is None or "cpu" in accelerators):  # type: ignore[attr-defined]
            strategies[entry.name] = str(entry.init_args.get("start_method", "popen"))
    return strategies


STRATEGIES = distributed_strategies()

SCENARIOS = ("raise", "sigkill", "stall", "stall-at-end", "launcher-sigkill")
HOW = ("python script.py", "switchyard run")

CI_CASES = {
    ("ddp", "raise", "python script.py"),
    ("ddp", "sigkill", "python script.py"),
    ("ddp", "stall", "python script.py"),
    ("ddp", "launcher-sigkill", "python script.py"),
    ("ddp", "launcher-sigkill", "switchyard run"),
    ("ddp_spawn", "launcher-sigkill", "python script.py"),
    ("deepspeed_stage_3", "raise", "python script.py"),
    ("deepspeed_stage_3", "sigkill", "python script.py"),
    ("deepspeed_stage_3", "stall", "python script.py"),
    ("deepspeed_stage_3", "launcher-sigkill", "python script.py"),
}
"""What CI runs (about 60 s on 2 cores, the DeepSpeed cases in scripts/test-deepspeed);
everything else under SWITCHYARD_STRESS=1."""

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
NEEDS_DEEPSPEED = pytest.mark.skip("needs deepspeed: scripts/test-deepspeed")
"""The DeepSpeed plugin registers its strategies everywhere; DeepSpeed itself is only in the
environment of scripts/test-deepspeed."""


def _marks(strategy: str, chosen: bool) -> list[pytest.MarkDecorator]:
    if strategy.startswith("deepspeed") and not HAS_DEEPSPEED:
        return [NEEDS_DEEPSPEED]
    return [] if chosen or STRESS else [pytest.mark.skip("SWITCHYARD_STRESS=1")]


def cases() -> Iterator[object]:
    for strategy, start_method in STRATEGIES.items():
        for scenario in SCENARIOS:
            for how in HOW:
                if how == "switchyard run" and start_method != "popen":
                    continue  # the script starts its own processes: switchyard run execs it
                for trial in range(TRIALS):
                    marks = _marks(strategy, (strategy, scenario, how) in CI_CASES)
                    yield pytest.param(
                        strategy,
                        scenario,
                        how,
                        id=f"{strategy}-{scenario}-{how}-{trial}",
                        marks=marks,
                    )


@dataclass
class Outcome:
    case: str
    seconds: float
    status: int | None
    orphans: int


RESULTS: list[Outcome] = []


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not RESULTS:
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["hang and orphan scenarios (seconds from the fault to the end of the job):"]
    lines += [
        f"  {r.case:<55} {r.seconds:6.2f} s  status {r.status}  orphans {r.orphans}"
        for r in RESULTS
    ]
    worst = max(RESULTS, key=lambda r: r.seconds)
    lines.append(
        f"  {len(RESULTS)} scenario(s), worst exit time {worst.seconds:.2f} s ({worst.case}), "
        f"orphans found {sum(r.orphans for r in RESULTS)}"
    )
    text = "\n".join(lines)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(text)
    report = os.environ.get("SWITCHYARD_SUITE_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")


# -- processes ----------------------------------------------------------------------------


def job_processes(token: str) -> list[int]:
    """The processes still running (not zombies) whose environment carries ``token``."""
    needle = f"SWITCHYARD_SUITE_TOKEN={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
            if _state(int(entry)) in ("Z", "X", None):
                continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def orphans_after(token: str, settle: float) -> list[int]:
    """The job's processes still alive ``settle`` seconds from now (every one is an orphan);
    they are killed, so that a failure does not leak them into other tests."""
    deadline = time.monotonic() + settle
    alive = job_processes(token)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = job_processes(token)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


def start(command: list[str], out: Path, token: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = out / "job.log"
    env = child_environment({"SWITCHYARD_SUITE_TOKEN": token, "PYTHONFAULTHANDLER": "1"})
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return proc, log


def command(how: str, strategy: str, action: str, out: Path) -> list[str]:
    program = [str(FAILURES), str(out), action, strategy, str(TIMEOUT)]
    if how == "switchyard run":
        return [sys.executable, "-m", "switchyard", "run", "--devices", "2", *program]
    return [sys.executable, *program]


def wait_for(paths: list[Path], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_LIMIT
    while not all(p.exists() for p in paths):
        if proc.poll() is not None:
            pytest.fail(f"the job ended before it was ready:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the job was not ready after {START_LIMIT} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def names_failed_rank(output: str, scenario: str, start_method: str) -> bool:
    """Whether the job's output names rank 1 as the rank that failed or stalled."""
    if scenario.startswith("stall"):
        return "ank 1 stalled" in output or "rank 1 never reached it" in output
    if start_method == "popen":
        return "from rank 1, which failed first" in output
    # torch.multiprocessing names the process whose exit it saw first
    return "process 1 terminated" in output or "deliberate failure of rank 1" in output


# -- the scenarios ------------------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "scenario", "how"), list(cases()))
def test_the_job_ends_and_leaves_no_process(
    tmp_path: Path, strategy: str, scenario: str, how: str
) -> None:
    start_method = STRATEGIES[strategy]
    token = uuid.uuid4().hex
    action = "hold" if scenario == "launcher-sigkill" else scenario
    proc, log = start(command(how, strategy, action, tmp_path), tmp_path, token)
    case = f"{strategy} / {scenario} / {how}"
    try:
        if scenario == "launcher-sigkill":
            wait_for([tmp_path / f"ready.{rank}" for rank in (0, 1)], proc, log)
            workers = [int((tmp_path / f"pid.{rank}").read_text()) for rank in (0, 1)]
            assert all(pid in job_processes(token) for pid in workers)
            killed = time.time()
            proc.kill()  # SIGKILL: no handler, no chance to stop the workers
            proc.wait()
            deadline = time.monotonic() + ORPHAN_BOUND
            while any(_state(pid) not in ("Z", "X", None) for pid in workers):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            seconds = time.time() - killed
            status: int | None = proc.returncode
        else:
            wait_for([tmp_path / "fault"], proc, log)
            bound = STALL_BOUND if scenario.startswith("stall") else FAILURE_BOUND
            try:
                proc.wait(timeout=bound + 30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{case}: the job did not end:\n{log.read_text()[-3000:]}")
            ended = time.time()
            seconds = ended - float((tmp_path / "fault").read_text())
            status = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    orphans = orphans_after(token, settle=ORPHAN_BOUND if scenario == "launcher-sigkill" else 3.0)
    RESULTS.append(Outcome(case, seconds, status, len(orphans)))
    output = log.read_text(errors="replace")
    assert not orphans, f"{case}: processes {orphans} outlived the job:\n{output[-3000:]}"
    if scenario == "launcher-sigkill":
        assert seconds <= ORPHAN_BOUND, f"{case}: the workers took {seconds:.1f} s to die"
        return
    assert status not in (0, None), f"{case}: the job ended with {status}:\n{output[-3000:]}"
    bound = STALL_BOUND if scenario.startswith("stall") else FAILURE_BOUND
    assert seconds <= bound, f"{case}: the job took {seconds:.1f} s (bound {bound} s)"
    assert names_failed_rank(output, scenario, start_method), (
        f"{case}: the output does not name rank 1:\n{output[-4000:]}"
    )
    if scenario == "sigkill" and start_method == "popen":
        assert status == 128 + signal.SIGKILL, output[-3000:]


# -- restarts -----------------------------------------------------------------------------


def restart_strategies() -> list[object]:
    """Strategies torchrun starts (the only ones ``--max-restarts`` applies to)."""
    return [
        pytest.param(
            name,
            marks=_marks(name, name == "ddp"),
        )
        for name, method in STRATEGIES.items()
        if method == "popen"
    ]


def resume(out: Path, strategy: str, *extra: str) -> subprocess.CompletedProcess[str]:
    token = uuid.uuid4().hex
    out.mkdir()
    env = child_environment({"SWITCHYARD_SUITE_TOKEN": token})
    run = [sys.executable, "-m", "switchyard", "run", "--devices", "2", "--strategy", strategy]
    job = subprocess.run(
        [*run, "--max-restarts", "1", "--timeout", "30", str(RESUME), str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert not orphans_after(token, settle=3.0), job.stderr
    return job


def losses(out: Path) -> dict[int, float]:
    """The loss of each step; a step repeated after a restart: its last value."""
    values = {}
    for line in (out / "losses.txt").read_text().splitlines():
        step, loss = line.split()
        values[int(step)] = float(loss)
    return values


@pytest.mark.parametrize("strategy", restart_strategies())
def test_a_restarted_job_resumes_with_the_uninterrupted_losses(
    tmp_path: Path, strategy: str
) -> None:
    plain = resume(tmp_path / "plain", strategy)
    assert plain.returncode == 0, plain.stderr[-3000:]
    restarted = resume(tmp_path / "restarted", strategy, "--fail-once")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert (tmp_path / "restarted" / "killed").read_text() == "7"  # it really was killed
    assert "restarting the job (restart 1 of at most 1)" in restarted.stderr
    # the restarted attempt repeated the steps after the checkpoint of step 6
    steps = [int(line.split()[0]) for line in (tmp_path / "restarted" / "losses.txt").open()]
    assert steps.count(6) == 2, steps
    assert losses(tmp_path / "restarted") == losses(tmp_path / "plain")
    expected = torch.load(tmp_path / "plain" / "final.pt", weights_only=True)
    actual = torch.load(tmp_path / "restarted" / "final.pt", weights_only=True)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.skipif(not STRESS, reason="SWITCHYARD_STRESS=1")
def test_without_restarts_the_same_kill_fails_the_job(tmp_path: Path) -> None:
    """The control: the restart above is what made that job succeed."""
    out = tmp_path / "out"
    out.mkdir()
    job = subprocess.run(
        [
            *[sys.executable, "-m", "switchyard", "run", "--devices", "2", "--strategy", "ddp"],
            *["--timeout", "30", str(RESUME), str(out), "--fail-once"],
        ],
        capture_output=True,
        text=True,
        env=child_environment(),
        timeout=240,
    )
    assert job.returncode == 128 + signal.SIGKILL, job.stderr[-3000:]
    assert "from rank 1, which failed first" in job.stderr
