"""IBM Spectrum LSF jobs started with ``jsrun``."""

from __future__ import annotations

import os
import socket

from switchyard.builtin.environments.common import (
    SchedulerManaged,
    derived_port,
    int_variable,
    optional_int,
    user_port,
)
from switchyard.errors import SelectionError


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
                try:
                    with open(rankfile, encoding="utf-8") as handle:
                        entries = [line.strip() for line in handle if line.strip()]
                except OSError as error:
                    raise SelectionError(
                        f"LSB_DJOB_RANKFILE={rankfile!r} cannot be read ({error.strerror}); "
                        "export MASTER_ADDR with the host name of the first compute node"
                    ) from None
            else:
                entries = os.environ.get("LSB_HOSTS", "").split()
            compute = entries[1:] or entries  # the first entry is the launch node
            self._hosts = list(dict.fromkeys(compute))
        return self._hosts

    @property
    def main_address(self) -> str:
        if os.environ.get("MASTER_ADDR"):
            return os.environ["MASTER_ADDR"]
        hosts = self.hosts()
        if not hosts:
            raise SelectionError(
                "LSF exported no host list (LSB_DJOB_RANKFILE or LSB_HOSTS), so the main node "
                "is unknown; export MASTER_ADDR with the host name of the first compute node"
            )
        return hosts[0]

    @property
    def main_port(self) -> int:
        port = user_port()
        if port is not None:
            return port
        return derived_port(os.environ.get("LSB_JOBID", ""))

    def world_size(self) -> int:
        return int_variable("JSM_NAMESPACE_SIZE", self._launcher)

    def global_rank(self) -> int:
        return int_variable("JSM_NAMESPACE_RANK", self._launcher)

    def local_rank(self) -> int:
        return int_variable("JSM_NAMESPACE_LOCAL_RANK", self._launcher)

    def local_world_size(self) -> int | None:
        return optional_int("JSM_NAMESPACE_LOCAL_SIZE")

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

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
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
