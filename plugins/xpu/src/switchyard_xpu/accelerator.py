"""The XPU accelerator: Intel GPUs through ``torch.xpu``.

PyTorch drives Intel GPUs itself since 2.5 (device type ``"xpu"``, built on SYCL and Level
Zero), and ``torch.distributed`` pairs the device type with the ``xccl`` backend (oneCCL). So
almost everything here is :class:`~switchyard.Accelerator`'s device-generic default; what this
plugin adds is what is really Intel's: why a GPU is not usable (a torch built without XPU, the
Level Zero visibility variables), bfloat16 support per device, and whether this torch was built
with ``xccl`` at all. Intel Extension for PyTorch (IPEX) is not needed for any of it; its
optimisation is a separate opt-in (:class:`switchyard_xpu.IPEXOptimization`).
"""

from __future__ import annotations

import os
from typing import ClassVar

import torch

from switchyard import Accelerator

VISIBILITY_VARIABLES = ("ZE_AFFINITY_MASK", "ONEAPI_DEVICE_SELECTOR")
"""The variables with which the Level Zero and SYCL runtimes hide devices from a process."""


def is_xpu_build() -> bool:
    """Whether this torch is built with XPU support (``torch.xpu._is_compiled()``); the CPU
    and CUDA wheels of PyTorch are not."""
    module = getattr(torch, "xpu", None)
    is_compiled = getattr(module, "_is_compiled", None)
    return bool(is_compiled()) if callable(is_compiled) else False


def visibility_settings() -> str:
    """The visibility variables set in this process, as ``NAME='value'`` pairs, or ``""``."""
    return ", ".join(
        f"{name}={os.environ[name]!r}" for name in VISIBILITY_VARIABLES if name in os.environ
    )


class XPUAccelerator(Accelerator):
    """Intel GPUs (Data Center GPU Max, Arc, integrated Xe graphics), one process per GPU,
    talking through ``xccl`` (oneCCL) for device tensors and gloo for CPU tensors.

    ``devices`` indices count the GPUs the process sees (``ZE_AFFINITY_MASK`` hides the others).
    """

    device_type: ClassVar[str] = "xpu"
    # BACKEND_FROM_TORCH: torch maps "xpu" to xccl and pairs it with gloo for CPU tensors
    # ("cpu:gloo,xpu:xccl"); process_group_backend() below adds the check that xccl was built
    # a SYCL context does not survive fork, as a CUDA one does not
    forks_after_init: ClassVar[bool] = False

    @classmethod
    def process_group_backend(cls) -> str | None:
        """``"cpu:gloo,xpu:xccl"`` where this torch has ``xccl`` (XPU builds since torch 2.8),
        ``None`` where it lacks it, so that multi-process strategies are refused before any
        process starts rather than failing in ``init_process_group``."""
        import torch.distributed as dist

        if not dist.is_available():
            return None
        xccl_available = getattr(dist, "is_xccl_available", None)
        if not callable(xccl_available) or not xccl_available():
            return None
        return super().process_group_backend()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not is_xpu_build():
            return (
                f"this torch ({torch.__version__}) is built without XPU support; install an XPU "
                "build of torch (pip install torch --index-url "
                "https://download.pytorch.org/whl/xpu) and Intel's GPU driver to use Intel GPUs"
            )
        if cls.is_available() and cls.device_count() > 0:
            return None
        hidden = visibility_settings()
        if hidden:
            return (
                f"torch {torch.__version__} sees no Intel GPU with {hidden}: that setting may "
                "hide every device; unset it or name a device that exists (sycl-ls lists them)"
            )
        return (
            f"torch {torch.__version__} (XPU build) sees no Intel GPU: none is present, or its "
            "driver (Level Zero) is not installed or not accessible to this user (sycl-ls "
            "lists what the runtime sees)"
        )

    @classmethod
    def supports_precision(cls, precision_name: str, dtype: torch.dtype | None) -> str | None:
        # asked of the current device; integrated and older GPUs lack bfloat16
        if dtype == torch.bfloat16 and cls.device_count() > 0 and not _native_bf16():
            return (
                f"{precision_name} computes in bfloat16, which this Intel GPU "
                f"({cls._name_of(0)}) only emulates, slower than float32; use 16-mixed or "
                "32-true"
            )
        return super().supports_precision(precision_name, dtype)

    @classmethod
    def _name_of(cls, index: int) -> str:
        try:
            return str(torch.xpu.get_device_name(index))
        except Exception:  # a name is nice to have in a message, never worth failing it
            return f"xpu:{index}"


def _native_bf16() -> bool:
    """Whether the current Intel GPU computes in bfloat16 natively; ``True`` where torch cannot
    say (torch's autocast still refuses a device that has no bfloat16 at all)."""
    is_bf16_supported = getattr(torch.xpu, "is_bf16_supported", None)
    if not callable(is_bf16_supported):
        return True
    try:
        # torch >= 2.6 counts emulated bfloat16 as supported unless asked not to
        return bool(is_bf16_supported(including_emulation=False))
    except TypeError:
        return bool(is_bf16_supported())
