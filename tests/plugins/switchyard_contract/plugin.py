"""The hooks of the contract test plugin (entry point ``contract``)."""

from __future__ import annotations

from collections.abc import Iterator

from switchyard import AcceleratorEntry, StrategyEntry, hookimpl


@hookimpl
def switchyard_accelerators() -> Iterator[AcceleratorEntry]:
    yield AcceleratorEntry(
        name="fresh_params_cpu",
        factory="switchyard_contract.accelerator:FreshParametersAccelerator",
        description="Test: the CPU, where moving a module creates new Parameter objects",
        priority=-100,
    )


@hookimpl
def switchyard_strategies() -> Iterator[StrategyEntry]:
    yield StrategyEntry(
        name="engine",
        factory="switchyard_contract.engine:EngineStrategy",
        description="Test: an engine that owns precision, backward and the optimizer step",
        priority=-100,
    )
