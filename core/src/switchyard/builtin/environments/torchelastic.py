"""Processes started by ``torchrun`` (torch.distributed.elastic)."""

from __future__ import annotations

import os

from switchyard.builtin.environments.common import (
    SchedulerManaged,
    int_variable,
    optional_int,
)
from switchyard.errors import SelectionError

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
        return os.environ.get("MASTER_ADDR") or "127.0.0.1"

    @property
    def main_port(self) -> int:
        return int_variable("MASTER_PORT", self._launcher)

    def world_size(self) -> int:
        return int_variable("WORLD_SIZE", self._launcher)

    def global_rank(self) -> int:
        return int_variable("RANK", self._launcher)

    def local_rank(self) -> int:
        return int_variable("LOCAL_RANK", self._launcher)

    def node_rank(self) -> int:
        return int_variable("GROUP_RANK", self._launcher)

    def local_world_size(self) -> int | None:
        return optional_int("LOCAL_WORLD_SIZE")

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        world, expected = self.world_size(), num_devices * num_nodes
        per_node = self.local_world_size()
        nodes = optional_int("GROUP_WORLD_SIZE")
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
