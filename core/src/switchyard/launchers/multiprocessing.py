"""Running a function in processes started by ``torch.multiprocessing``."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.multiprocessing as mp
from torch.multiprocessing.spawn import start_processes

from switchyard.launcher import Launcher
from switchyard.launchers.worker import die_with_parent, die_with_process


class MultiprocessingLauncher(Launcher):
    """Run ``function`` in one process per device, started with ``spawn``, ``fork`` or
    ``forkserver``, through ``torch.multiprocessing.start_processes``: when one process raises,
    the others are terminated and the parent raises with that process's traceback.

    ``spawn`` pickles the function and its arguments (the runtime included); ``fork`` works in
    notebooks but not once an accelerator that forbids forking has been initialized.

    Every process dies with the launching one, however it ends (SIGKILL included): see
    :func:`switchyard.launchers.worker.die_with_parent`. Under ``forkserver`` the processes are
    the fork server's children, and the fork server lives as long as they do; they watch the
    launching process itself (:func:`~switchyard.launchers.worker.die_with_process`).

    Args:
        start_method: ``"spawn"``, ``"fork"`` or ``"forkserver"``.
        num_processes: processes to start on this node, local ranks ``0..num_processes - 1``.
        num_nodes: nodes of the job, each running ``num_processes``.
        node_rank: this node's index; its processes have global ranks from
            ``node_rank * num_processes``.
        main_address, main_port: the rendezvous on node 0, exported to every process as
            ``MASTER_ADDR``/``MASTER_PORT``. On a single node the launcher holds the rendezvous
            store itself, bound before any process starts, on ``main_port`` or, when it is
            ``None``, on a port the OS picks: no other program can take the port between its
            choice and its use, as it could while the processes import torch.
        timeout: how long the processes wait for each other at the rendezvous.
    """

    requires_function = True

    def __init__(
        self,
        start_method: str,
        *,
        num_processes: int,
        num_nodes: int,
        node_rank: int,
        main_address: str,
        main_port: int | None,
        timeout: timedelta = timedelta(minutes=10),
    ) -> None:
        self.start_method = start_method
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.node_rank = node_rank
        self.main_address = main_address
        self.main_port = main_port
        self.timeout = timeout
        self.is_interactive_compatible = start_method == "fork"

    def launch(self, function: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> Any:
        if function is None:
            raise RuntimeError(
                f"start method {self.start_method!r} needs the function to run in each process: "
                "runtime.launch(main)"
            )
        store = None
        port = self.main_port
        if self.num_nodes == 1:
            store = host_store(self.main_address, port, self.timeout)
            port = store.port
        elif port is None:
            raise ValueError("a job of several nodes needs the main_port every node agrees on")
        variables = {
            "MASTER_ADDR": self.main_address,
            "MASTER_PORT": str(port),
            "NODE_RANK": str(self.node_rank),
            "WORLD_SIZE": str(self.num_processes * self.num_nodes),
            "LOCAL_WORLD_SIZE": str(self.num_processes),
        }
        if store is not None:
            variables[HOSTED_STORE_VARIABLE] = "1"
        context = mp.get_context(self.start_method)
        results = context.SimpleQueue()
        start_processes(
            _worker,
            args=(
                variables,
                self.num_processes,
                function,
                args,
                kwargs,
                results,
                (os.getpid(), self.start_method),
            ),
            nprocs=self.num_processes,
            start_method=self.start_method,
            join=True,
        )
        del store  # held until every process has ended
        return results.get() if not results.empty() else None


HOSTED_STORE_VARIABLE = "SWITCHYARD_LAUNCHER_STORE"
"""Set (``1``) in the processes whose launcher holds the rendezvous store: every rank, rank 0
included, connects to it as a client."""


def host_store(address: str, port: int | None, timeout: timedelta) -> Any:
    """A ``TCPStore`` server bound on ``address:port`` (``None``: a port the OS picks), which the
    processes of the job connect to; a :class:`~switchyard.SelectionError` saying what holds
    the port when it cannot be bound."""
    from torch._C._distributed_c10d import TCPStore

    from switchyard.errors import SelectionError

    try:
        return TCPStore(address, port or 0, None, True, timeout, wait_for_workers=False)
    except Exception as error:
        raise SelectionError(
            f"the rendezvous could not be opened on {address}:{port or 0} "
            f"({type(error).__name__}: {error}). "
            + (
                "Another program holds that port: set another MASTER_PORT, or unset it so a free "
                "one is chosen"
                if port
                else "MASTER_ADDR must be an address of this machine (unset it for 127.0.0.1)"
            )
        ) from error


def _worker(
    local_rank: int,
    variables: dict[str, str],
    num_processes: int,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    results: Any,
    launcher: tuple[int, str] = (0, "spawn"),
) -> None:
    launcher_pid, start_method = launcher
    if launcher_pid:
        if start_method == "forkserver":
            # the parent is the fork server, which lives as long as any of its processes does
            # (each holds the pipe whose end tells it the launcher is gone): watch the launcher
            die_with_parent(None)
            die_with_process(launcher_pid)
        else:
            die_with_parent(launcher_pid)
    os.environ.update(variables)
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["RANK"] = str(int(variables["NODE_RANK"]) * num_processes + local_rank)
    output = function(*args, **kwargs)
    if os.environ["RANK"] == "0":
        results.put(output)
