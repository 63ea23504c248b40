"""The hook implementations switchyard discovers through the ``switchyard`` entry point ``fsdp``."""

from __future__ import annotations

from collections.abc import Iterator

from switchyard import StrategyEntry, hookimpl

_FACTORY = "switchyard_fsdp.strategy:FSDPStrategy"

# FSDP2 runs on any accelerator that declares a process group backend and sharding collectives
# (sharded=True): selection asks the accelerator, so a vendor's device needs no change here


@hookimpl
def switchyard_strategies() -> Iterator[StrategyEntry]:
    yield StrategyEntry(
        name="fsdp",
        factory=_FACTORY,
        description="Fully sharded data parallel (FSDP2 fully_shard); re-runs the script per process (torchrun)",
        init_args={"start_method": "popen"},
        distributed=True,
        sharded=True,
        priority=5,
    )
    yield StrategyEntry(
        name="fsdp_spawn",
        factory=_FACTORY,
        description="fsdp in processes started with spawn; runtime.launch(fn)",
        init_args={"start_method": "spawn"},
        distributed=True,
        sharded=True,
    )
    yield StrategyEntry(
        name="fsdp_cpu_offload",
        factory=_FACTORY,
        description="fsdp with parameters, gradients and optimizer state offloaded to CPU memory",
        init_args={"start_method": "popen", "cpu_offload": True},
        distributed=True,
        sharded=True,
    )
