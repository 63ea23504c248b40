"""The hook implementations switchyard discovers through the ``switchyard`` entry point ``cpu``."""

from __future__ import annotations

from collections.abc import Iterator

from switchyard import AcceleratorEntry, hookimpl


@hookimpl
def switchyard_accelerators() -> Iterator[AcceleratorEntry]:
    yield AcceleratorEntry(
        name="cpu",
        factory="switchyard_cpu.accelerator:CPUAccelerator",
        description="The host CPU; devices=N runs N processes",
        priority=0,
    )
