"""The hooks switchyard discovers through the entry point ``example`` (see pyproject.toml).

They run every time plugins are listed, so they only describe entries: the implementations are
named as ``"module:attr"`` strings and imported when selected.
"""

from __future__ import annotations

from collections.abc import Iterator

from switchyard import AcceleratorEntry, StrategyEntry, hookimpl

_STRATEGY = "switchyard_example.strategy:AllReduceStrategy"


@hookimpl
def switchyard_accelerators() -> Iterator[AcceleratorEntry]:
    yield AcceleratorEntry(
        name="example_cpu",
        factory="switchyard_example.accelerator:CoreShareAccelerator",
        description="Example: the host CPU, its cores shared out between processes",
        # below the CPU plugin's 0: accelerator="auto" never prefers the example
        priority=-10,
    )


@hookimpl
def switchyard_strategies() -> Iterator[StrategyEntry]:
    yield StrategyEntry(
        name="example_allreduce",
        factory=_STRATEGY,
        init_args={"start_method": "popen"},
        description="Example: data parallel by averaging gradients after backward; torchrun",
        distributed=True,
        priority=-10,
    )
    yield StrategyEntry(
        name="example_allreduce_spawn",
        factory=_STRATEGY,
        init_args={"start_method": "spawn"},
        description="Example: example_allreduce in processes started with spawn; launch(fn)",
        distributed=True,
        priority=-10,
    )
