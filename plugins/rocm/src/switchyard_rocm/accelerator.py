"""The ROCm accelerator: AMD GPUs through a ROCm build of torch.

A ROCm build of torch drives AMD GPUs through ``torch.cuda`` (HIP behind CUDA's names): tensors
live on device type ``cuda``, and the ``torch.distributed`` backend named ``"nccl"`` is RCCL. The
accelerator applies only where ``torch.version.hip`` is set; on a CUDA or CPU build it says so,
as the ``cuda`` accelerator steps aside on a ROCm build. Device counts come from
``torch.cuda.device_count()``, which asks amdsmi (when installed) while HIP is not initialised,
so that ``fork`` start methods stay usable after selection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

import torch

from switchyard import Accelerator, DeviceSelectionError

VISIBILITY_VARIABLES = ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
"""The variables that hide AMD GPUs from a process, in the order ROCm applies them: ROCR first
(the runtime), then HIP's (``CUDA_VISIBLE_DEVICES`` is read where HIP's is not set)."""


def hip_version() -> str | None:
    """``torch.version.hip`` (``"6.2.41133"``) on a ROCm build of torch, else ``None``."""
    version = getattr(torch.version, "hip", None)
    return str(version) if version else None


def visibility_note(count: int) -> str:
    """What the visibility variables select, for ``count`` visible GPUs, in words."""
    set_vars = [
        f"{name}={os.environ[name]!r}" for name in VISIBILITY_VARIABLES if name in os.environ
    ]
    if not set_vars:
        if count == 0:
            return f"none of {', '.join(VISIBILITY_VARIABLES)} is set, and no GPU is visible"
        return f"all {count} GPU(s) of this machine are visible (no visibility variable is set)"
    if count == 0:
        return f"{' and '.join(set_vars)} leave no GPU visible; unset them or list the GPUs to use"
    return (
        f"{' and '.join(set_vars)} make {count} GPU(s) visible, as indices 0..{count - 1} "
        "(indices count the visible GPUs, not the machine's)"
    )


class ROCmAccelerator(Accelerator):
    """AMD GPUs (Instinct, Radeon) one process per GPU, talking through RCCL (torch's ``nccl``
    backend on ROCm) and gloo for CPU tensors."""

    device_type: ClassVar[str] = "cuda"
    # torch.distributed calls RCCL "nccl" on ROCm builds
    distributed_backend: ClassVar[str | None] = "cpu:gloo,cuda:nccl"
    supports_sharding: ClassVar[bool] = True
    # a HIP context does not survive fork, as a CUDA one does not
    forks_after_init: ClassVar[bool] = False

    @classmethod
    def is_available(cls) -> bool:
        return cls.device_count() > 0

    @classmethod
    def device_count(cls) -> int:
        if hip_version() is None:
            return 0
        return max(int(torch.cuda.device_count()), 0)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if hip_version() is None:
            cuda = getattr(torch.version, "cuda", None)
            if cuda:
                return (
                    f"this torch ({torch.__version__}) is a CUDA build (CUDA {cuda}), not a ROCm "
                    "build (torch.version.hip is not set): the cuda accelerator applies"
                )
            return (
                f"this torch ({torch.__version__}) is not a ROCm build (torch.version.hip is not "
                "set); install a ROCm build of torch (https://pytorch.org/get-started/locally/) "
                "to use AMD GPUs"
            )
        count = cls.device_count()
        if count > 0:
            return None
        return (
            f"torch {torch.__version__} (HIP {hip_version()}) sees no AMD GPU: "
            f"{visibility_note(0)}; check that the amdgpu driver is loaded (rocm-smi lists what "
            "it sees) and that this user may open /dev/kfd"
        )

    @classmethod
    def is_initialized(cls) -> bool:
        return hip_version() is not None and bool(torch.cuda.is_initialized())

    @classmethod
    def parse_devices(cls, devices: int | str | Sequence[int]) -> list[int]:
        """As :meth:`Accelerator.parse_devices`, over the GPUs the visibility variables leave
        (indices count the visible GPUs); a refusal says what those variables select."""
        try:
            return super().parse_devices(devices)
        except DeviceSelectionError as error:
            raise DeviceSelectionError(f"{error}; {visibility_note(cls.device_count())}") from None

    def setup_device(self, device: torch.device) -> None:
        torch.cuda.set_device(device)

    def device_name(self, device: torch.device) -> str:
        return str(torch.cuda.get_device_name(device))
