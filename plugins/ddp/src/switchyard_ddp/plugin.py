"""The hook implementations switchyard discovers through the ``switchyard`` entry point ``ddp``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from switchyard import StrategyEntry, hookimpl

_FACTORY = "switchyard_ddp.strategy:DDPStrategy"


@hookimpl
def switchyard_strategies() -> Iterator[StrategyEntry]:
    yield StrategyEntry(
        name="ddp",
        factory=_FACTORY,
        description="DistributedDataParallel; re-runs the script per process (torchrun)",
        init_args={"start_method": "popen"},
        distributed=True,
        priority=10,
    )
    yield StrategyEntry(
        name="ddp_spawn",
        factory=_FACTORY,
        description="DistributedDataParallel in processes started with spawn; launch(fn)",
        init_args={"start_method": "spawn"},
        distributed=True,
    )
    yield StrategyEntry(
        name="ddp_fork",
        factory=_FACTORY,
        description="DistributedDataParallel in processes started with fork; launch(fn)",
        init_args={"start_method": "fork"},
        distributed=True,
    )
    yield StrategyEntry(
        name="ddp_notebook",
        factory=_FACTORY,
        description="ddp_fork for notebooks and interactive sessions",
        init_args={"start_method": "fork"},
        distributed=True,
    )


@hookimpl
def switchyard_env_report() -> Mapping[str, Any]:
    # gloo's network interface and transport choices
    return {"variables": ("GLOO_",)}
