"""Re-running the user's script once per process through ``torch.distributed.run``."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError
from switchyard.launcher import Launcher

DEFAULT_MAIN_PORT = 29500
"""torchrun's default rendezvous port, used for multi-node jobs when none is given."""


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
) -> list[str]:
    """The ``torchrun`` command line (without the program name) for this job."""
    args = ["--nproc-per-node", str(num_processes), "--max-restarts", "0"]
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
    return [*args, *command]


def run_torchrun(arguments: Sequence[str]) -> int:
    """Run ``torchrun`` in this process; return 0, or 1 after printing which rank failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    parsed = get_args_parser().parse_args(list(arguments))
    if "OMP_NUM_THREADS" not in os.environ:
        # share the cores between the processes; torchrun's own default is one thread each
        local = max(int(parsed.nproc_per_node), 1)
        os.environ["OMP_NUM_THREADS"] = str(max((os.cpu_count() or 1) // local, 1))
    try:
        run(parsed)
    except ChildFailedError as error:
        failures = sorted(error.failures.items())
        ranks = ", ".join(f"rank {rank} (exit code {f.exitcode})" for rank, f in failures)
        print(
            f"switchyard: the job failed: {ranks}. The failing process's traceback is printed "
            "above; torchrun's report follows.\n" + error.format_msg(),
            file=sys.stderr,
        )
        return 1
    return 0


class TorchrunLauncher(Launcher):
    """Start one process per device by re-running the current script through
    ``torch.distributed.run``, the machinery behind ``torchrun``: its agent watches the workers,
    ends all of them when one fails, and forwards SIGINT/SIGTERM.

    The launching process only supervises: it runs the script up to ``runtime.launch()``, then
    waits for the workers and exits with their status. Each worker runs the whole script, sees
    ``torchelastic`` as its cluster environment and starts nothing itself.
    """

    requires_function = False

    def __init__(self, environment: ClusterEnvironment, num_processes: int, num_nodes: int) -> None:
        self.environment = environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes

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
            self.num_processes, self.num_nodes, node_rank, address, port, script_command()
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
