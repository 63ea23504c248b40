"""The hook implementations switchyard discovers through the ``switchyard`` entry point ``rocm``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from switchyard import AcceleratorEntry, hookimpl


@hookimpl
def switchyard_accelerators() -> Iterator[AcceleratorEntry]:
    yield AcceleratorEntry(
        name="rocm",
        factory="switchyard_rocm.accelerator:ROCmAccelerator",
        description="AMD GPUs through a ROCm build of torch (device type cuda, rccl between processes)",
        # the same as cuda: the two never apply together (a torch build is ROCm or CUDA)
        priority=100,
        aliases=("gpu",),
    )


@hookimpl
def switchyard_env_report() -> Mapping[str, Any]:
    import torch

    return {
        "versions": {"hip (torch build)": getattr(torch.version, "hip", None)},
        "variables": (
            "HIP_VISIBLE_DEVICES",
            "ROCR_VISIBLE_DEVICES",
            "CUDA_VISIBLE_DEVICES",
            "GPU_DEVICE_ORDINAL",
            "PYTORCH_HIP_ALLOC_CONF",
            "HSA_",
            "MIOPEN_",
            # RCCL reads NCCL's variables
            "TORCH_NCCL_",
            "NCCL_",
            "RCCL_",
        ),
    }
