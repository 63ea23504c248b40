"""The hook implementations switchyard discovers through the ``switchyard`` entry point ``cpu``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from switchyard import AcceleratorEntry, hookimpl


@hookimpl
def switchyard_accelerators() -> Iterator[AcceleratorEntry]:
    yield AcceleratorEntry(
        name="cpu",
        factory="switchyard_cpu.accelerator:CPUAccelerator",
        description="The host CPU; devices=N runs N processes",
        priority=0,
    )


@hookimpl
def switchyard_env_report() -> Mapping[str, Any]:
    # the thread pools torch's CPU kernels use
    return {"variables": ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_AFFINITY", "OMP_PROC_BIND")}
