"""Processes started by ``torchrun`` (torch.distributed.elastic)."""

from __future__ import annotations

import os

from switchyard.builtin.environments.common import (
    SchedulerManaged,
    address_variable,
    check_layout_consistency,
    optional_size_variable,
    port_variable,
    rank_variable,
    size_variable,
)
from switchyard.errors import SelectionError
from switchyard.validation import MAX_DEVICES_PER_NODE, MAX_NUM_NODES

_TORCHRUN_VARS = frozenset(
    {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK"}
)


class TorchElasticEnvironment(SchedulerManaged):
    """Processes started by ``torchrun`` (``torch.distributed.run``, torch.distributed.elastic),
    including those switchyard's own script launcher starts through it.

    Detected by ``TORCHELASTIC_RUN_ID`` (what ``torch.distributed.is_torchelastic_launched``
    checks) or by the full set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``, ``GROUP_RANK`` that torchrun-compatible launchers export. Reads
    ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``GROUP_RANK``
    (the node rank), ``LOCAL_WORLD_SIZE`` and ``GROUP_WORLD_SIZE`` (the number of nodes).
    """

    _launcher = "torchrun"

    @classmethod
    def detect(cls) -> bool:
        return "TORCHELASTIC_RUN_ID" in os.environ or _TORCHRUN_VARS.issubset(os.environ)

    @property
    def main_address(self) -> str:
        return address_variable("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        return port_variable("MASTER_PORT", self._launcher)

    def world_size(self) -> int:
        return size_variable("WORLD_SIZE", self._launcher)

    def global_rank(self) -> int:
        return rank_variable("RANK", self._launcher)

    def local_rank(self) -> int:
        return rank_variable("LOCAL_RANK", self._launcher)

    def node_rank(self) -> int:
        return rank_variable("GROUP_RANK", self._launcher)

    def local_world_size(self) -> int | None:
        return optional_size_variable("LOCAL_WORLD_SIZE", self._launcher, MAX_DEVICES_PER_NODE)

    def num_nodes(self) -> int | None:
        """``GROUP_WORLD_SIZE``, the number of nodes (agents), or ``None`` if it is unset."""
        return optional_size_variable("GROUP_WORLD_SIZE", self._launcher, MAX_NUM_NODES)

    def _check_layout(self) -> None:
        """Inconsistent torchrun variables (a rank at or above the world size...) fail here,
        before any store is created (:func:`check_layout_consistency`)."""
        per_node, nodes, world = self.local_world_size(), self.num_nodes(), self.world_size()
        if nodes is not None:
            node_count = ("GROUP_WORLD_SIZE", nodes)
        elif per_node is not None and world % per_node == 0:
            # GROUP_WORLD_SIZE unset (torchrun-compatible launchers that export only part of
            # torchrun's variables): the nodes are the processes over those of one node
            node_count = ("WORLD_SIZE/LOCAL_WORLD_SIZE", world // per_node)
        else:
            # every node runs at least one process, so no node rank reaches the world size
            node_count = ("WORLD_SIZE", world)
        check_layout_consistency(
            self._launcher,
            rank=("RANK", self.global_rank()),
            world_size=("WORLD_SIZE", world),
            local_rank=("LOCAL_RANK", self.local_rank()),
            local_world_size=None if per_node is None else ("LOCAL_WORLD_SIZE", per_node),
            node_rank=("GROUP_RANK", self.node_rank()),
            num_nodes=node_count,
        )

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        self._check_layout()
        world, expected = self.world_size(), num_devices * num_nodes
        per_node = self.local_world_size()
        nodes = self.num_nodes()
        known = per_node is not None and nodes is not None
        layout = f"torchrun runs {per_node} per node on {nodes} node(s)" if known else ""
        if world != expected:
            # worded like the strategy's own check, which catches what slips past this one
            what = (
                f"{world} processes were started, but the runtime expects {expected} "
                f"(devices={num_devices} x num_nodes={num_nodes})"
            )
            what += f"; {layout}" if known else ""
        elif (per_node is not None and per_node != num_devices) or (
            nodes is not None and nodes != num_nodes
        ):
            what = (
                f"{layout}, but the runtime asks for devices={num_devices} per node on "
                f"num_nodes={num_nodes}"
            )
        else:
            return
        fix = f"pass devices={per_node}, num_nodes={nodes}, or " if known else ""
        raise SelectionError(
            f"{what}. Either {fix}start torchrun with --nproc-per-node {num_devices} "
            f"--nnodes {num_nodes}"
        )
