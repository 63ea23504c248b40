"""The hook implementations switchyard discovers through the ``switchyard`` entry point ``fsdp``."""

from __future__ import annotations

from collections.abc import Iterator

from switchyard import StrategyEntry, hookimpl

_FACTORY = "switchyard_fsdp.strategy:FSDPStrategy"

SUPPORTED_ACCELERATORS = ("cpu", "cuda", "rocm", "xpu")
"""Accelerators FSDP2 runs on: a torch.distributed backend that has reduce-scatter and
all-gather (gloo, nccl, xccl). Not ``mps`` (no distributed backend) nor ``xla`` (which has its own
``xla_fsdp``)."""


@hookimpl
def switchyard_strategies() -> Iterator[StrategyEntry]:
    yield StrategyEntry(
        name="fsdp",
        factory=_FACTORY,
        description="Fully sharded data parallel (FSDP2 fully_shard); re-runs the script per process (torchrun)",
        init_args={"start_method": "popen"},
        accelerators=SUPPORTED_ACCELERATORS,
        distributed=True,
        priority=5,
    )
    yield StrategyEntry(
        name="fsdp_spawn",
        factory=_FACTORY,
        description="fsdp in processes started with spawn; runtime.launch(fn)",
        init_args={"start_method": "spawn"},
        accelerators=SUPPORTED_ACCELERATORS,
        distributed=True,
    )
    yield StrategyEntry(
        name="fsdp_cpu_offload",
        factory=_FACTORY,
        description="fsdp with parameters, gradients and optimizer state offloaded to CPU memory",
        init_args={"start_method": "popen", "cpu_offload": True},
        accelerators=SUPPORTED_ACCELERATORS,
        distributed=True,
    )
