"""Re-running the user's script once per process through ``torch.distributed.run``."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from switchyard.environment import DEFAULT_MAIN_PORT, ClusterEnvironment
from switchyard.errors import SelectionError
from switchyard.launcher import Launcher
from switchyard.launchers.worker import (
    DIAGNOSIS_PREFIX,
    EXIT_TIMES_VARIABLE,
    SUPERVISOR_VARIABLE,
)

MAX_RESTARTS_LIMIT = 100
"""The most restarts ``switchyard run --max-restarts`` accepts: a job that fails a hundred times
has a bug, not bad luck."""

WORKER_ENTRY = str(Path(__file__).with_name("worker.py"))
"""The program every worker runs, by its path: :mod:`switchyard.launchers.worker`, which runs
the user's script and ends the process cleanly."""


def script_command(argv: Sequence[str] | None = None) -> list[str]:
    """How the current program was started, as torchrun's trailing arguments: the script path,
    or ``-m package.module`` when it was run with ``python -m``."""
    argv = list(sys.argv if argv is None else argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", None):
        name = spec.name
        if name.endswith(".__main__"):
            name = name[: -len(".__main__")]
        return ["-m", name, *argv[1:]]
    if not argv or not argv[0] or argv[0] == "-c":
        raise RuntimeError(
            "runtime.launch() cannot re-run this program: it was not started from a script "
            "file (python -c or an interactive session). Put the code in a script, or use a "
            "strategy that starts processes with a function: strategy='ddp_spawn' (or "
            "'ddp_notebook' in notebooks) and runtime.launch(main)"
        )
    return argv


def check_port_free(address: str, port: int) -> None:
    """Raise a clear error if ``port`` is already taken on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as error:
            raise SelectionError(
                f"main port {port} on {address} is already in use ({error.strerror}); the "
                "rendezvous of node 0 needs it. Pass another --main-port (or MASTER_PORT), or "
                "stop the process holding it"
            ) from None


def torchrun_arguments(
    num_processes: int,
    num_nodes: int,
    node_rank: int,
    main_address: str,
    main_port: int | None,
    command: Sequence[str],
    *,
    max_restarts: int = 0,
    timeout: timedelta | None = None,
) -> list[str]:
    """The ``torchrun`` command line (without the program name) for this job. ``command`` is
    the program as ``python`` takes it (``script.py ARGS...`` or ``-m package ARGS...``); every
    worker runs it through :mod:`switchyard.launchers.worker`.

    ``max_restarts``: how often torchrun's agent restarts every worker after one failed (the
    script resumes from its last checkpoint). ``timeout``: how long the agents' rendezvous
    waits for the other nodes (``--rdzv-conf``: ``timeout`` of the static rendezvous that
    ``--master-addr`` uses, ``join_timeout`` of the c10d one), like every collective."""
    check_max_restarts(max_restarts)
    args = ["--nproc-per-node", str(num_processes), "--max-restarts", str(max_restarts)]
    if timeout is not None:
        seconds = max(math.ceil(timeout.total_seconds()), 1)
        args += ["--rdzv-conf", f"timeout={seconds},join_timeout={seconds}"]
    if num_nodes == 1:
        if main_port is None:
            # torchrun --standalone: a private rendezvous on a free port
            args += [
                "--nnodes",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                "localhost:0",
                "--rdzv-id",
                uuid.uuid4().hex,
            ]
        else:
            args += [
                "--nnodes",
                "1",
                "--master-addr",
                main_address,
                "--master-port",
                str(main_port),
            ]
    else:
        args += [
            "--nnodes",
            str(num_nodes),
            "--node-rank",
            str(node_rank),
            "--master-addr",
            main_address,
            "--master-port",
            str(main_port or DEFAULT_MAIN_PORT),
        ]
    return [*args, WORKER_ENTRY, *command]


def check_max_restarts(value: object, source: str = "max_restarts") -> int:
    """``value`` as a number of restarts, ``0..MAX_RESTARTS_LIMIT``; a
    :class:`~switchyard.SelectionError` naming ``source`` otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= MAX_RESTARTS_LIMIT
    ):
        raise SelectionError(
            f"{source}={value!r} is not a number of restarts: give a whole number from 0 (never "
            f"restart, the default) to {MAX_RESTARTS_LIMIT}"
        )
    return value


def run_torchrun(arguments: Sequence[str]) -> int:
    """Run ``torchrun`` in this process and return the job's exit status: 0, or that of the
    worker that failed first (128 + N for one killed by signal N) after printing which ranks
    failed, and which ranks stalled when a collective timed out; 128 + N when this process is
    stopped by signal N (torchrun stops the workers).

    Every worker is this process's child and dies with it, however it dies
    (:func:`switchyard.launchers.worker.die_with_parent`)."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    parsed = get_args_parser().parse_args(list(arguments))
    if "OMP_NUM_THREADS" not in os.environ:
        # share the cores between the processes; torchrun's own default is one thread each
        local = max(int(parsed.nproc_per_node), 1)
        os.environ["OMP_NUM_THREADS"] = str(max((os.cpu_count() or 1) // local, 1))
    previous = {name: os.environ.get(name) for name in (EXIT_TIMES_VARIABLE, SUPERVISOR_VARIABLE)}
    with tempfile.TemporaryDirectory(prefix="switchyard-exits-") as exit_times:
        os.environ[EXIT_TIMES_VARIABLE] = exit_times  # the workers inherit it
        os.environ[SUPERVISOR_VARIABLE] = str(os.getpid())  # the parent they must have
        try:
            run(parsed)
        except ChildFailedError as error:
            rank, status = first_failure(error.failures, Path(exit_times))
            ranks = ", ".join(
                f"rank {r} (exit code {f.exitcode})" for r, f in sorted(error.failures.items())
            )
            cause = ""
            if len(error.failures) > 1:
                cause = f", from rank {rank}, which failed first"
                if error.get_first_failure()[0] != rank:
                    cause += " (torchrun's report goes by whole seconds and names another)"
            stalled = stall_report(Path(exit_times))
            summary = f"{ranks}; exit status {status}{cause}"
            if stalled:
                # the cause first: the ranks that failed only waited for the stalled one
                summary = f"{stalled}. Exit status {status}; {ranks}"
            if parsed.training_script == WORKER_ENTRY and parsed.training_script_args:
                error.name = _program_name(parsed.training_script_args)  # not worker.py
            print(
                f"switchyard: the job failed: {summary}. The failing process's output (a "
                "traceback, if it raised) is above; torchrun's report follows.\n"
                + error.format_msg(),
                file=sys.stderr,
            )
            return status
        except SignalException as error:
            print(
                f"switchyard: stopped by {_signal_name(error.sigval)}; the workers were stopped",
                file=sys.stderr,
            )
            return 128 + int(error.sigval)
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return 0


def stall_report(exit_times: Path) -> str:
    """What the workers whose collective timed out found (:func:`record_diagnosis
    <switchyard.launchers.worker.record_diagnosis>`): the ranks that never reached it, named
    first, since the waiting ranks only failed because of them; ``""`` when none recorded."""
    stalled: set[int] = set()
    waiting: set[int] = set()
    found: list[dict[str, Any]] = []
    for path in sorted(exit_times.glob(f"{DIAGNOSIS_PREFIX}*")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            missing = {int(r) for r in record["missing"]}
            waiting.add(int(record["rank"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        stalled |= missing
        found.append(record)
    stalled -= waiting  # a rank that reported was waiting itself
    if not found:
        return ""
    first = found[0]
    what, seconds = first.get("what", "a collective"), first.get("timeout", "?")
    waiters = _ranks(sorted(waiting))
    if not stalled and what == "the creation of the process group":
        return (
            f"every rank joined, but they could not connect to each other ({what} timed out "
            f"after {seconds} s; the ranks' errors above say how)"
        )
    if not stalled:
        return (
            f"every rank was waiting ({what} timed out after {seconds} s): the ranks called "
            "different collectives, or the same ones in a different order"
        )
    return (
        f"{_ranks(sorted(stalled))} stalled: {'it' if len(stalled) == 1 else 'they'} never "
        f"reached {what} that {waiters} waited in "
        f"for {seconds} s (the timeout), so the waiting ranks failed and the job was ended"
    )


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def first_failure(failures: Mapping[int, Any], exit_times: Path | None = None) -> tuple[int, int]:
    """``(rank, exit status)`` of the worker that failed first among torchrun's ``failures``
    (rank -> ``ProcessFailure``). Peers of a worker that fails in the middle of a collective fail
    a moment later, often within the same second, which is all torchrun's timestamps tell; so
    when every failed worker recorded in ``exit_times`` when its program ended (what
    :mod:`switchyard.launchers.worker` does), those times decide; otherwise torchrun's order.
    A worker killed by a signal other than SIGTERM records nothing, and is taken to have failed
    first: torchrun stops the others with SIGTERM, so such a kill came from outside (SIGKILL,
    the out-of-memory killer, a crash) and its peers failed because it was gone.
    A status is 128 + N for a worker killed by signal N, and never 0."""
    times: dict[int, int] = {}
    if exit_times is not None:
        for rank in failures:
            try:
                times[rank] = int((exit_times / str(rank)).read_text())
            except (OSError, ValueError):
                pass
    killed = [
        r
        for r in failures
        if r not in times
        and int(failures[r].exitcode) < 0
        and -int(failures[r].exitcode) != int(signal.SIGTERM)
    ]
    if killed:
        rank = min(killed, key=lambda r: (failures[r].timestamp, r))
    elif len(times) == len(failures):
        rank = min(failures, key=lambda r: (times[r], r))
    elif times and all(
        int(failures[r].exitcode) == -int(signal.SIGTERM) for r in failures if r not in times
    ):
        # the ranks without a record are those torchrun stopped after the first failure
        rank = min(times, key=lambda r: (times[r], r))
    else:
        # records are missing (a worker failed before it could write one): a worker torchrun
        # stopped with SIGTERM failed because another did, so prefer those that failed
        # themselves, then torchrun's order
        own = [r for r in failures if -int(failures[r].exitcode) != int(signal.SIGTERM)]
        rank = min(own or failures, key=lambda r: (failures[r].timestamp, r))
    code = int(failures[rank].exitcode)
    return rank, (128 - code if code < 0 else code) or 1


def _program_name(command: Sequence[str]) -> str:
    """``train.py`` or ``-m package``: the program of a worker command, for messages."""
    return " ".join(command[:2]) if command[0] == "-m" else command[0]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class TorchrunLauncher(Launcher):
    """Start one process per device by re-running the current script through
    ``torch.distributed.run``, the machinery behind ``torchrun``: its agent watches the workers,
    ends all of them when one fails, and forwards SIGINT/SIGTERM.

    The launching process only supervises: it runs the script up to ``runtime.launch()``, then
    waits for the workers and exits with the job's status (0, or that of the worker that failed
    first: see :func:`run_torchrun`). Each worker runs the whole script through
    :mod:`switchyard.launchers.worker`, sees ``torchelastic`` as its cluster environment and
    starts nothing itself.
    """

    requires_function = False

    def __init__(
        self,
        environment: ClusterEnvironment,
        num_processes: int,
        num_nodes: int,
        timeout: timedelta | None = None,
    ) -> None:
        self.environment = environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.timeout = timeout

    def arguments(self) -> list[str]:
        port_env = os.environ.get("MASTER_PORT")
        port = int(port_env) if port_env else None
        node_rank = self.environment.node_rank()
        address = os.environ.get("MASTER_ADDR", "127.0.0.1")
        if port is not None and node_rank == 0:
            check_port_free(address, port)
        elif self.num_nodes > 1 and node_rank == 0:
            check_port_free(address, DEFAULT_MAIN_PORT)
        return torchrun_arguments(
            self.num_processes,
            self.num_nodes,
            node_rank,
            address,
            port,
            script_command(),
            timeout=self.timeout,
        )

    def launch(self, function: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> NoReturn:
        if function is not None:
            raise RuntimeError(
                "this strategy re-runs the script in every process: call runtime.launch() "
                "without a function, or choose strategy='ddp_spawn' to run a function"
            )
        code = run_torchrun(self.arguments())
        # the workers ran the training; the supervisor must not run it once more
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(code)
