"""One machine, or nodes started by hand: switchyard starts the processes itself."""

from __future__ import annotations

import os

from switchyard.builtin.environments.common import (
    address_variable,
    check_layout_consistency,
    find_free_port,
    optional_rank_variable,
    optional_size_variable,
    user_port,
)
from switchyard.environment import DEFAULT_MAIN_PORT, ClusterEnvironment
from switchyard.errors import SelectionError
from switchyard.validation import MAX_DEVICES_PER_NODE, MAX_NUM_NODES

_LAUNCHER = "switchyard's launcher"


class LocalEnvironment(ClusterEnvironment):
    """One machine, or nodes started by hand (``switchyard run --node-rank``), where switchyard
    starts the processes itself.

    Reads ``MASTER_ADDR`` (default ``127.0.0.1``), ``MASTER_PORT`` (default: 29500 for several
    nodes, else a free port), ``NODE_RANK`` (or ``GROUP_RANK``; default 0) and, in the processes
    switchyard's launchers started, ``LOCAL_RANK``, ``RANK`` and ``WORLD_SIZE``. Ranks the
    strategy computed (:meth:`set_world_size`, :meth:`set_global_rank`) take precedence over
    ``RANK``/``WORLD_SIZE``, which may be left over from an outer launcher. Always detected:
    the fallback with the lowest priority.
    """

    def __init__(self) -> None:
        self._world_size: int | None = None
        self._global_rank: int | None = None
        self._main_port: int | None = None
        self._num_nodes = 1

    @classmethod
    def detect(cls) -> bool:
        return True

    @property
    def creates_processes_externally(self) -> bool:
        # our own launchers export LOCAL_RANK to the processes they start
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        return address_variable("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if self._main_port is None:
            env_port = user_port()
            if env_port is not None:
                self._main_port = env_port
            elif self._num_nodes > 1:
                # every node must agree without talking: a free port of node 0 is unknowable
                self._main_port = DEFAULT_MAIN_PORT
            else:
                address = self.main_address
                try:
                    self._main_port = find_free_port(address)
                except OSError as error:
                    raise SelectionError(
                        f"MASTER_ADDR={address!r} is not an address of this machine, so no "
                        f"port can be opened on it ({error.strerror or error}); on a single "
                        "node unset MASTER_ADDR (127.0.0.1 is used) or set it to one of this "
                        "machine's addresses"
                    ) from None
        return self._main_port

    def world_size(self) -> int:
        if self._world_size is not None:
            return self._world_size
        return optional_size_variable("WORLD_SIZE", _LAUNCHER) or 1

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        if self._global_rank is not None:
            return self._global_rank
        return optional_rank_variable("RANK", _LAUNCHER) or 0

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank

    def local_rank(self) -> int:
        return optional_rank_variable("LOCAL_RANK", _LAUNCHER) or 0

    def local_world_size(self) -> int | None:
        return optional_size_variable("LOCAL_WORLD_SIZE", _LAUNCHER, MAX_DEVICES_PER_NODE)

    def node_rank(self) -> int:
        """``NODE_RANK`` (``switchyard run --node-rank``), else ``GROUP_RANK``, else 0."""
        for name in ("NODE_RANK", "GROUP_RANK"):
            value = optional_rank_variable(name, "switchyard run --node-rank")
            if value is not None:
                if value >= MAX_NUM_NODES:
                    raise SelectionError(
                        f"{name}={value} is not a node index: a job has at most "
                        f"{MAX_NUM_NODES} nodes, numbered from 0. Fix or unset {name}"
                    )
                return value
        return 0

    def _check_layout(self) -> None:
        """Inconsistent variables in the processes switchyard's launchers started
        (``LOCAL_RANK`` at or above ``LOCAL_WORLD_SIZE``) fail here, before any store is
        created (:func:`check_layout_consistency`). ``RANK``/``WORLD_SIZE`` are not compared:
        the strategy computes the ranks, and these may be left over from an outer launcher."""
        per_node = self.local_world_size()
        if per_node is not None and "LOCAL_RANK" in os.environ:
            check_layout_consistency(
                _LAUNCHER,
                rank=("LOCAL_RANK", self.local_rank()),
                world_size=("LOCAL_WORLD_SIZE", per_node),
            )

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        self._check_layout()
        self._num_nodes = num_nodes
        node_rank = self.node_rank()
        if node_rank >= num_nodes:
            raise SelectionError(
                f"NODE_RANK={node_rank}, but num_nodes={num_nodes} allows node ranks 0.."
                f"{num_nodes - 1}. Give each node its own NODE_RANK below num_nodes, or pass "
                f"num_nodes={node_rank + 1} or more"
            )
        if node_rank > 0 and not os.environ.get("MASTER_ADDR", "").strip():
            raise SelectionError(
                f"this is node {node_rank} of {num_nodes}, but MASTER_ADDR is not set, so it "
                "cannot find node 0. Export MASTER_ADDR (node 0's host name or IP address) and "
                "MASTER_PORT on every node, or start the job with a scheduler switchyard "
                "detects (torchrun, srun, mpirun, jsrun)"
            )
