"""The hook implementations switchyard discovers through the ``switchyard`` entry point ``cuda``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from switchyard import AcceleratorEntry, hookimpl


@hookimpl
def switchyard_accelerators() -> Iterator[AcceleratorEntry]:
    yield AcceleratorEntry(
        name="cuda",
        factory="switchyard_cuda.accelerator:CUDAAccelerator",
        description="NVIDIA GPUs through torch.cuda (nccl between processes)",
        # above the CPU (0); never usable together with rocm (100), which applies to ROCm
        # builds of torch where this one steps aside
        priority=100,
        aliases=("gpu",),
    )


@hookimpl
def switchyard_env_report() -> Mapping[str, Any]:
    import torch

    return {
        # torch.version.cuda is the toolkit torch was built with; asking the driver would
        # initialise CUDA in the reporting process
        "versions": {"cuda (torch build)": torch.version.cuda},
        "variables": (
            "CUDA_VISIBLE_DEVICES",
            "CUDA_DEVICE_ORDER",
            "CUDA_LAUNCH_BLOCKING",
            "CUDA_MODULE_LOADING",
            "PYTORCH_CUDA_ALLOC_CONF",
            "PYTORCH_NVML_BASED_CUDA_CHECK",
            "TORCH_NCCL_",
            "NCCL_",
        ),
    }
