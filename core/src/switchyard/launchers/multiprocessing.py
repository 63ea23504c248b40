"""Running a function in processes started by ``torch.multiprocessing``."""

from __future__ import annotations

import os
from collections.abc import Callable
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
            ``MASTER_ADDR``/``MASTER_PORT``.
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
        main_port: int,
    ) -> None:
        self.start_method = start_method
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.node_rank = node_rank
        self.main_address = main_address
        self.main_port = main_port
        self.is_interactive_compatible = start_method == "fork"

    def launch(self, function: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> Any:
        if function is None:
            raise RuntimeError(
                f"start method {self.start_method!r} needs the function to run in each process: "
                "runtime.launch(main)"
            )
        variables = {
            "MASTER_ADDR": self.main_address,
            "MASTER_PORT": str(self.main_port),
            "NODE_RANK": str(self.node_rank),
            "WORLD_SIZE": str(self.num_processes * self.num_nodes),
            "LOCAL_WORLD_SIZE": str(self.num_processes),
        }
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
        return results.get() if not results.empty() else None


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
