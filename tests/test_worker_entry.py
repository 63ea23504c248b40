"""``switchyard.launchers.worker``, the program every worker of switchyard's torchrun launcher
runs, without torch.distributed: it must run a script or module exactly as ``python`` does, end
the process the way the interpreter's shutdown begins (threads, atexit, streams) and then at
once, and report a failure's status. Also how the supervisor picks the job's exit status.

Each case runs the same program under ``python`` and under the entry point and compares them;
the programs import nothing heavy, so each takes a few tens of milliseconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from switchyard.launchers.torchrun import WORKER_ENTRY, first_failure, torchrun_arguments
from switchyard.launchers.worker import EXIT_TIMES_VARIABLE
from switchyard.testing.subprocesses import child_environment

PROBE = """
import sys
this = sys.modules[__name__]
print("argv", sys.argv)
print("path0", sys.path[0])
print("file", __file__, "name", __name__, "package", __package__)
print("spec", getattr(__spec__, "name", None), "loader", type(__loader__).__name__)
print("main is this module", sys.modules["__main__"] is this)
print("globals", sorted(globals()))
print("imported", [m for m in ("switchyard", "torch", "multiprocessing") if m in sys.modules])
"""


def run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env or child_environment(),
    )


def both(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], ...]:
    """``python ARGS`` and ``python worker.py ARGS``."""
    return run([sys.executable, *args], cwd), run([sys.executable, WORKER_ENTRY, *args], cwd)


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def test_a_script_sees_what_python_gives_it(tmp_path):
    write(tmp_path / "scripts" / "probe.py", PROBE)
    plain, entry = both(["scripts/probe.py", "--lr", "0.1"], tmp_path)
    assert plain.returncode == entry.returncode == 0, entry.stderr
    assert entry.stdout == plain.stdout
    assert f"path0 {tmp_path / 'scripts'}" in entry.stdout
    assert "imported []" in entry.stdout  # not even switchyard runs before the script


def test_a_module_sees_what_python_m_gives_it(tmp_path):
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "__main__.py", PROBE)
    plain, entry = both(["-m", "app", "x"], tmp_path)
    assert plain.returncode == entry.returncode == 0, entry.stderr
    assert entry.stdout == plain.stdout
    assert "spec app.__main__" in entry.stdout


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("pass", 0),
        ("sys.exit(3)", 3),
        ("sys.exit(130)", 130),
        ("sys.exit(-1)", 255),
        ("sys.exit(None)", 0),
        ("sys.exit('bye')", 1),
        ("def inner():\n    raise ValueError('boom')\ninner()", 1),
        ("sys.excepthook = lambda *a: print('hooked', a[1], file=sys.stderr)\n1 / 0", 1),
        ("raise KeyboardInterrupt", -signal.SIGINT),
        ("x = = 1", 1),
        ("sys.stdout.close()", 0),
    ],
    ids=[
        "end",
        "exit3",
        "exit130",
        "exit-1",
        "exit-none",
        "exit-message",
        "raise",
        "excepthook",
        "ctrl-c",
        "syntax",
        "stdout-closed",
    ],
)
def test_exit_status_and_error_output_are_pythons(tmp_path, body, status):
    write(tmp_path / "program.py", "import sys\n" + body + "\n")
    plain, entry = both(["program.py"], tmp_path)
    assert plain.returncode == status
    assert entry.returncode == status, entry.stderr
    # the same traceback: it starts in the program, no frame of the entry point
    assert entry.stderr == plain.stderr


def test_missing_programs_are_reported_like_python(tmp_path):
    for args in (["missing.py"], ["-m", "missing_module"]):
        plain, entry = both(args, tmp_path)
        assert (entry.returncode, entry.stderr) == (plain.returncode, plain.stderr)


def test_the_end_runs_threads_atexit_logging_and_files_then_skips_finalization(tmp_path):
    write(
        tmp_path / "program.py",
        """
        import atexit, logging, logging.handlers, sys, threading, time

        class Noisy:
            def __del__(self):
                print("finalized", flush=True)

        noisy = Noisy()  # destroyed only by the interpreter's finalization
        atexit.register(print, "atexit", flush=True)
        logger = logging.getLogger("program")
        target = logging.FileHandler("log.txt")
        logger.addHandler(logging.handlers.MemoryHandler(100, logging.CRITICAL + 1, target))
        logger.warning("kept until logging shuts down")
        unclosed = open("unclosed.txt", "w")
        unclosed.write("never closed")

        def late():
            time.sleep(0.3)
            print("thread", flush=True)

        threading.Thread(target=late).start()
        sys.exit(4)
        """,
    )
    for command, finalized in (
        ([sys.executable, "program.py"], True),
        ([sys.executable, WORKER_ENTRY, "program.py"], False),
    ):
        for name in ("log.txt", "unclosed.txt"):
            (tmp_path / name).unlink(missing_ok=True)
        proc = run(command, tmp_path)
        assert proc.returncode == 4, proc.stderr
        # the interpreter's order: non-daemon threads first, then the atexit handlers
        expected = ["thread", "atexit", *(["finalized"] if finalized else [])]
        assert proc.stdout.split() == expected
        assert (tmp_path / "log.txt").read_text() == "kept until logging shuts down\n"
        assert (tmp_path / "unclosed.txt").read_text() == "never closed"


@pytest.mark.parametrize(("body", "recorded"), [("sys.exit(2)", True), ("pass", False)])
def test_a_failing_worker_records_when_its_program_ended(tmp_path, body, recorded):
    write(tmp_path / "program.py", "import sys\n" + body + "\n")
    times = tmp_path / "times"
    times.mkdir()
    env = child_environment({EXIT_TIMES_VARIABLE: str(times), "RANK": "5"})
    before = time.time_ns()
    run([sys.executable, WORKER_ENTRY, "program.py"], tmp_path, env)
    if not recorded:
        assert not (times / "5").exists()
        return
    assert before < int((times / "5").read_text()) < time.time_ns()


def failure(exitcode: int, timestamp: int = 100) -> SimpleNamespace:
    return SimpleNamespace(exitcode=exitcode, timestamp=timestamp)


def test_the_worker_that_ended_first_decides_the_job_status(tmp_path):
    # rank 1 exited with 3; rank 0 failed a moment later, within the same second
    failures = {0: failure(1), 1: failure(3)}
    (tmp_path / "0").write_text("2000")
    (tmp_path / "1").write_text("1000")
    assert first_failure(failures, tmp_path) == (1, 3)
    # without a record for every failed worker, torchrun's timestamps (then the rank) decide
    (tmp_path / "0").unlink()
    assert first_failure(failures, tmp_path) == (0, 1)
    assert first_failure({0: failure(1, 101), 1: failure(3, 100)}, None) == (1, 3)
    # killed by a signal: 128 + its number, as a shell reports it
    assert first_failure({0: failure(-signal.SIGABRT)}) == (0, 128 + signal.SIGABRT)
    # a worker torchrun stopped with SIGTERM after it recorded its own (later) failure is not
    # the cause when the worker that failed first left no record (seen on a loaded machine)
    (tmp_path / "1").unlink()
    (tmp_path / "0").write_text("2000")
    stopped_after = {0: failure(-signal.SIGTERM), 1: failure(1)}
    assert first_failure(stopped_after, tmp_path) == (1, 1)


def test_torchrun_runs_the_program_through_the_entry_point():
    from torch.distributed.run import get_args_parser

    for program in (["train.py", "--lr", "1"], ["-m", "app.train", "--lr", "1"]):
        args = get_args_parser().parse_args(torchrun_arguments(2, 1, 0, "127.0.0.1", None, program))
        assert args.training_script == WORKER_ENTRY
        assert args.training_script_args == program
        assert not args.module
        assert not args.no_python
        assert args.nproc_per_node == "2"
