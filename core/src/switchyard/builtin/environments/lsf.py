"""IBM Spectrum LSF jobs started with ``jsrun``."""

from __future__ import annotations

import os
import socket
import stat

from switchyard.builtin.environments.common import (
    SchedulerManaged,
    address_variable,
    check_layout_consistency,
    derived_port,
    optional_size_variable,
    rank_variable,
    size_variable,
    user_port,
)
from switchyard.errors import SelectionError
from switchyard.validation import MAX_DEVICES_PER_NODE, address_problem

MAX_RANKFILE_BYTES = 64 << 20
"""The largest rank file read (``LSB_DJOB_RANKFILE``): one short line per slot, so a million
slots fit; anything larger is not a rank file, and reading it whole would fill the memory."""


class LSFEnvironment(SchedulerManaged):
    """Processes started by ``jsrun``, the job step manager of IBM Spectrum LSF on CSM clusters.

    Detected by ``LSB_JOBID`` with ``JSM_NAMESPACE_SIZE``, ``JSM_NAMESPACE_RANK`` and
    ``JSM_NAMESPACE_LOCAL_RANK`` (world size, rank, local rank); ``JSM_NAMESPACE_LOCAL_SIZE``
    is the number of processes on this node. The hosts come from the file named by
    ``LSB_DJOB_RANKFILE`` (one line per slot) or else from ``LSB_HOSTS``; the first entry is the
    launch node, which runs no task, and is skipped. The main address is the first compute host
    (or ``MASTER_ADDR``), the main port :func:`derived_port` of ``LSB_JOBID`` (or
    ``MASTER_PORT``), the node rank the position of this host among the compute hosts.
    """

    _launcher = "jsrun"

    def __init__(self) -> None:
        self._hosts: list[str] | None = None

    @classmethod
    def detect(cls) -> bool:
        required = (
            "LSB_JOBID",
            "JSM_NAMESPACE_SIZE",
            "JSM_NAMESPACE_RANK",
            "JSM_NAMESPACE_LOCAL_RANK",
        )
        return all(name in os.environ for name in required)

    def hosts(self) -> list[str]:
        """The job's compute hosts, each once, in the scheduler's order (launch node dropped)."""
        if self._hosts is None:
            entries: list[str] = []
            rankfile = os.environ.get("LSB_DJOB_RANKFILE", "").strip()
            if rankfile:
                entries = _read_rankfile(rankfile)
            else:
                entries = os.environ.get("LSB_HOSTS", "").split()
            compute = entries[1:] or entries  # the first entry is the launch node
            self._hosts = list(dict.fromkeys(compute))
        return self._hosts

    @property
    def main_address(self) -> str:
        if os.environ.get("MASTER_ADDR", "").strip():
            return address_variable("MASTER_ADDR", "")
        hosts = self.hosts()
        if not hosts:
            raise SelectionError(
                "LSF exported no host list (LSB_DJOB_RANKFILE or LSB_HOSTS), so the main node "
                "is unknown; export MASTER_ADDR with the host name of the first compute node"
            )
        problem = address_problem(hosts[0])
        if problem is not None:
            source = "LSB_DJOB_RANKFILE" if os.environ.get("LSB_DJOB_RANKFILE") else "LSB_HOSTS"
            raise SelectionError(
                f"the first compute host in {source}, {hosts[0][:80]!r}, {problem}; export "
                "MASTER_ADDR with the host name of the first compute node"
            )
        return hosts[0]

    @property
    def main_port(self) -> int:
        port = user_port()
        if port is not None:
            return port
        return derived_port(os.environ.get("LSB_JOBID", ""))

    def world_size(self) -> int:
        return size_variable("JSM_NAMESPACE_SIZE", self._launcher)

    def global_rank(self) -> int:
        return rank_variable("JSM_NAMESPACE_RANK", self._launcher)

    def local_rank(self) -> int:
        return rank_variable("JSM_NAMESPACE_LOCAL_RANK", self._launcher)

    def local_world_size(self) -> int | None:
        return optional_size_variable(
            "JSM_NAMESPACE_LOCAL_SIZE", self._launcher, MAX_DEVICES_PER_NODE
        )

    def node_rank(self) -> int:
        hosts = self.hosts()
        hostname = socket.gethostname()
        short = hostname.split(".")[0]
        for index, host in enumerate(hosts):
            if host == hostname or host.split(".")[0] == short:
                return index
        local_size = self.local_world_size()
        if local_size:
            return self.global_rank() // local_size
        raise SelectionError(
            f"this host ({hostname}) is not among the job's hosts ({', '.join(hosts) or 'none'}) "
            "and JSM_NAMESPACE_LOCAL_SIZE is not set, so its node rank is unknown"
        )

    def _check_layout(self) -> None:
        """Inconsistent jsrun variables (a rank at or above the namespace size...) fail here,
        before any store is created (:func:`check_layout_consistency`)."""
        per_node = self.local_world_size()
        check_layout_consistency(
            self._launcher,
            rank=("JSM_NAMESPACE_RANK", self.global_rank()),
            world_size=("JSM_NAMESPACE_SIZE", self.world_size()),
            local_rank=("JSM_NAMESPACE_LOCAL_RANK", self.local_rank()),
            local_world_size=None if per_node is None else ("JSM_NAMESPACE_LOCAL_SIZE", per_node),
        )

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        self._check_layout()
        world = self.world_size()
        per_node = self.local_world_size()
        if (per_node is not None and per_node != num_devices) or (world != num_devices * num_nodes):
            layout = f" ({per_node} on this node)" if per_node is not None else ""
            raise SelectionError(
                f"jsrun started {world} process(es){layout}, but the runtime asks for "
                f"devices={num_devices} x num_nodes={num_nodes} = {num_devices * num_nodes}. "
                f"Either match devices= and num_nodes= to the jsrun layout, or run jsrun with "
                f"--nrs {num_nodes} --rs_per_host 1 --tasks_per_rs {num_devices}"
            )
        hosts = self.hosts()
        if hosts and num_nodes > len(hosts):
            raise SelectionError(
                f"the LSF job has {len(hosts)} compute host(s), but the runtime asks for "
                f"num_nodes={num_nodes}. Pass num_nodes={len(hosts)} or less, or submit with "
                f"bsub -nnodes {num_nodes}"
            )


def _read_rankfile(path: str) -> list[str]:
    """The non-blank lines of the rank file ``LSB_DJOB_RANKFILE`` names; an error naming the
    variable when it is not a regular file (a FIFO or device would block or never end), is
    larger than :data:`MAX_RANKFILE_BYTES`, cannot be read, or is not text."""
    fix = "export MASTER_ADDR with the host name of the first compute node, or fix the variable"
    try:
        # stat first: opening a FIFO would wait for a writer forever
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise SelectionError(
                f"LSB_DJOB_RANKFILE={path!r} is not a regular file (LSF writes the rank file as "
                f"one); {fix}"
            )
        with open(path, "rb") as handle:
            data = handle.read(MAX_RANKFILE_BYTES + 1)
    except OSError as error:
        raise SelectionError(
            f"LSB_DJOB_RANKFILE={path!r} cannot be read ({error.strerror or error}); {fix}"
        ) from None
    if len(data) > MAX_RANKFILE_BYTES:
        raise SelectionError(
            f"LSB_DJOB_RANKFILE={path!r} is larger than {MAX_RANKFILE_BYTES >> 20} MiB, which "
            f"no rank file is (one host name per slot); {fix}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SelectionError(
            f"LSB_DJOB_RANKFILE={path!r} is not a text file of host names (byte "
            f"{error.start} is not UTF-8); {fix}"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]
