"""The ClusterEnvironment interface: where ranks, world size and the rendezvous address come from."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

from switchyard.errors import SelectionError
from switchyard.validation import MAX_DEVICES_PER_NODE, parse_int

DEFAULT_MAIN_PORT = 29500
"""``torch.distributed``'s (and torchrun's) default rendezvous port: the main port of a job whose
nodes must agree on one without talking, when neither ``MASTER_PORT`` nor the scheduler gives
one."""


class ClusterEnvironment(ABC):
    """Answers, for the current process, the questions ``torch.distributed`` needs.

    Implement this for a scheduler and publish it through an
    :class:`~switchyard.EnvironmentEntry`. :meth:`detect` reads only environment variables; the
    other methods may assume ``detect()`` returned ``True`` (or that the user chose this
    environment explicitly).
    """

    @classmethod
    @abstractmethod
    def detect(cls) -> bool:
        """Whether the current process was started by this environment (from its variables)."""

    @property
    @abstractmethod
    def creates_processes_externally(self) -> bool:
        """``True`` when the scheduler (torchrun, SLURM's ``srun``, ``mpirun``) has already
        started one process per device, so switchyard must not launch any."""

    @property
    @abstractmethod
    def main_address(self) -> str:
        """Host name or IP address of the rank-0 node, for the rendezvous."""

    @property
    @abstractmethod
    def main_port(self) -> int:
        """TCP port on :attr:`main_address` for the rendezvous."""

    @abstractmethod
    def world_size(self) -> int:
        """Total number of processes in the job."""

    @abstractmethod
    def set_world_size(self, size: int) -> None:
        """Record the world size switchyard computed (environments that know it may ignore this)."""

    @abstractmethod
    def global_rank(self) -> int:
        """This process's rank among all processes, ``0 <= rank < world_size``."""

    @abstractmethod
    def set_global_rank(self, rank: int) -> None:
        """Record the rank switchyard computed (environments that know it may ignore this)."""

    @abstractmethod
    def local_rank(self) -> int:
        """This process's rank among the processes of its node; also its device index."""

    @abstractmethod
    def node_rank(self) -> int:
        """The index of this process's node, ``0 <= node_rank < num_nodes``."""

    def local_world_size(self) -> int | None:
        """How many processes run on this node when :attr:`creates_processes_externally` (so
        ``devices="auto"`` can follow the launcher); ``None`` if unknown. Default: the
        ``LOCAL_WORLD_SIZE`` variable torchrun exports, if set."""
        value = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
        if not value:
            return None
        try:
            return parse_int(value, minimum=1, maximum=MAX_DEVICES_PER_NODE)
        except ValueError as problem:
            raise SelectionError(
                f"LOCAL_WORLD_SIZE={value[:80]!r} {problem}: it is the number of processes on "
                f"this node, 1..{MAX_DEVICES_PER_NODE}. Fix or unset it"
            ) from None

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Raise :class:`~switchyard.SelectionError` if the user's ``devices``/``num_nodes``
        contradict what the scheduler allocated. Default: accept."""

    def teardown(self) -> None:
        """Undo anything this environment changed in the process (environment variables)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
