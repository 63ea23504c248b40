"""How the workers of a 2-process DDP job end: atexit handlers, logging, exit statuses.

The workers that switchyard's torchrun launcher starts run the script through
``switchyard.launchers.worker``, which ends them with ``os._exit`` only after everything the
interpreter's own exit does before finalization (see docs/architecture.md, "Ending a distributed
process").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from switchyard.testing.subprocesses import Finished
from switchyard.testing.subprocesses import run as run_child

EXITS = Path(__file__).parent / "scripts" / "exits.py"
TIMEOUT = 120

pytestmark = pytest.mark.distributed

COMMANDS = {
    "python script.py": [sys.executable],
    "switchyard run": [sys.executable, "-m", "switchyard", "run", "--devices", "2"],
}


def run(how: str, out: Path, action: str) -> Finished:
    """The job, in a clean environment; at the timeout its whole process tree is killed (a
    worker waiting for a peer that is gone must not outlive the test)."""
    finished = run_child(
        [*COMMANDS[how], str(EXITS), str(out), action], timeout=TIMEOUT, log=out / "job.log"
    )
    assert not finished.timed_out, f"the job {finished.describe()}:\n{finished.tail()}"
    return finished


def test_atexit_handlers_logging_and_open_files_are_flushed_in_every_worker(tmp_path):
    job = run("python script.py", tmp_path, "finish")
    assert job.returncode == 0, job.output
    # registered before runtime.launch(): runs in both workers and in the launching process
    for name in ("atexit.0", "atexit.1", "atexit.supervisor"):
        assert (tmp_path / name).read_text() == "ran", name
    for rank in (0, 1):
        # a MemoryHandler writes its records only when logging shuts down at exit
        assert f"rank {rank} says goodbye" in (tmp_path / f"log.{rank}").read_text()
        unclosed = (tmp_path / f"unclosed.{rank}").read_text()
        assert unclosed == f"written by rank {rank}, never closed"


@pytest.mark.parametrize("how", list(COMMANDS))
def test_sys_exit_in_a_worker_is_the_exit_status_of_the_job(tmp_path, how):
    job = run(how, tmp_path, "exit3")
    # rank 0 fails too once its peer is gone, but rank 1 ended first
    assert job.returncode == 3, job.output
    assert "exit status 3" in job.output
    assert (tmp_path / "atexit.1").read_text() == "ran"
    assert "rank 1 exits with 3" in (tmp_path / "log.1").read_text()


def test_an_exception_in_a_worker_fails_the_job_and_names_the_rank(tmp_path):
    job = run("python script.py", tmp_path, "raise")
    assert job.returncode == 1, job.output
    assert "rank 1 (local rank 1, node 0) failed with RuntimeError" in job.output
    assert "deliberate failure of rank 1" in job.output
    # the traceback starts in the script, as under python script.py; torchrun's report names it
    lines = job.output.splitlines()
    start = lines.index("[rank1]: Traceback (most recent call last):")
    assert lines[start + 1].startswith(f'[rank1]:   File "{EXITS}", line ')
    assert "launchers/worker.py" not in job.output
    assert f"{EXITS.name} FAILED" in job.output
    assert (tmp_path / "atexit.1").read_text() == "ran"
