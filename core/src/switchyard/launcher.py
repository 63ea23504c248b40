"""The Launcher interface: how a strategy gets from one process to the many it runs in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any


class Launcher(ABC):
    """Starts the processes a strategy needs.

    Two kinds exist. A *script* launcher (``requires_function = False``) re-runs the user's script
    once per process, the way ``torchrun`` does, while the original process only supervises and
    exits with the job's status: ``runtime.launch()`` needs no argument. A *function* launcher
    (``requires_function = True``) starts processes with ``torch.multiprocessing`` and runs the
    given function in each of them: ``runtime.launch(main)``.

    When the cluster environment reports ``creates_processes_externally`` (torchrun, SLURM),
    no launcher runs at all.
    """

    requires_function: bool = False
    """Whether :meth:`launch` needs a function to run in each process."""

    is_interactive_compatible: bool = False
    """Whether it works inside a notebook or REPL (only ``fork`` does)."""

    @abstractmethod
    def launch(self, function: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> Any:
        """Start the processes and run ``function(*args, **kwargs)`` in each.

        A script launcher is given ``None`` and does not return: the workers run the script, and
        the supervising process exits with their status. Return what rank 0's call returned.
        """
