"""Running a function in processes started by ``torch.multiprocessing``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch.multiprocessing as mp
from torch.multiprocessing.spawn import start_processes

from switchyard.launcher import Launcher

if TYPE_CHECKING:
    from switchyard.parallel import ParallelStrategy


class MultiprocessingLauncher(Launcher):
    """Run ``function`` in one process per device, started with ``spawn``, ``fork`` or
    ``forkserver``, through ``torch.multiprocessing.start_processes``: when one process raises,
    the others are terminated and the parent raises with that process's traceback.

    ``spawn`` pickles the function and its arguments (the runtime included); ``fork`` works in
    notebooks but not once an accelerator that forbids forking has been initialized.
    """

    requires_function = True

    def __init__(self, strategy: ParallelStrategy, start_method: str) -> None:
        self.strategy = strategy
        self.start_method = start_method
        self.is_interactive_compatible = start_method == "fork"

    def launch(self, function: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> Any:
        if function is None:
            raise RuntimeError(
                f"start method {self.start_method!r} needs the function to run in each process: "
                "runtime.launch(main)"
            )
        strategy = self.strategy
        env = strategy.environment
        variables = {
            "MASTER_ADDR": env.main_address,
            "MASTER_PORT": str(env.main_port),
            "NODE_RANK": str(env.node_rank()),
            "WORLD_SIZE": str(strategy.num_processes * strategy.num_nodes),
            "LOCAL_WORLD_SIZE": str(strategy.num_processes),
        }
        context = mp.get_context(self.start_method)
        results = context.SimpleQueue()
        start_processes(
            _worker,
            args=(variables, strategy.num_processes, function, args, kwargs, results),
            nprocs=strategy.num_processes,
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
) -> None:
    os.environ.update(variables)
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["RANK"] = str(int(variables["NODE_RANK"]) * num_processes + local_rank)
    output = function(*args, **kwargs)
    if os.environ["RANK"] == "0":
        results.put(output)
