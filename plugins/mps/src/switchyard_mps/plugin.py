"""The hook implementations switchyard discovers through the ``switchyard`` entry point ``mps``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from switchyard import AcceleratorEntry, hookimpl


@hookimpl
def switchyard_accelerators() -> Iterator[AcceleratorEntry]:
    yield AcceleratorEntry(
        name="mps",
        factory="switchyard_mps.accelerator:MPSAccelerator",
        description="The Apple silicon GPU through torch.mps; one device, one process",
        # above the CPU; below cuda and rocm, though none of them applies on a Mac
        priority=90,
        aliases=("gpu",),
    )


@hookimpl
def switchyard_env_report() -> Mapping[str, Any]:
    import platform

    return {
        "versions": {"macOS": platform.mac_ver()[0] or None},
        "variables": ("PYTORCH_ENABLE_MPS_FALLBACK", "PYTORCH_MPS_"),
    }
