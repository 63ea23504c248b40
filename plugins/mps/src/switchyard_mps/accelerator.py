"""The MPS accelerator: the GPU of Apple silicon Macs through ``torch.mps`` (Metal).

A Mac has one such GPU, and no ``torch.distributed`` backend takes MPS tensors (gloo and nccl
do not), so the accelerator declares ``distributed_backend = None`` and
``supports_sharding = False``: selection refuses DDP, FSDP and every other multi-process
strategy before any process starts, and ``strategy="auto"`` picks ``single_device``. It also
declares the precisions Metal lacks (:meth:`MPSAccelerator.supports_precision`): no float64 at
all, bfloat16 only from macOS 14.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import ClassVar

import torch

from switchyard import Accelerator, DeviceSelectionError

BF16_MACOS = (14, 0)
"""The first macOS whose Metal Performance Shaders compute in bfloat16."""


def _mps_built() -> bool:
    return bool(torch.backends.mps.is_built())


class MPSAccelerator(Accelerator):
    """The Apple silicon GPU: one device, one process."""

    device_type: ClassVar[str] = "mps"
    # one GPU per machine, and no process group backend takes its tensors
    distributed_backend: ClassVar[str | None] = None
    supports_sharding: ClassVar[bool] = False
    forks_after_init: ClassVar[bool] = False

    @classmethod
    def is_available(cls) -> bool:
        return _mps_built() and bool(torch.backends.mps.is_available())

    @classmethod
    def device_count(cls) -> int:
        return 1 if cls.is_available() else 0

    @classmethod
    def auto_device_count(cls) -> int:
        return 1

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not _mps_built():
            return (
                f"this torch ({torch.__version__}) is built without MPS: the MPS accelerator "
                "needs an Apple silicon Mac, macOS 12.3 or newer, and the macOS arm64 build of "
                "torch"
            )
        if not torch.backends.mps.is_available():
            return (
                f"torch {torch.__version__} is built with MPS but finds no Metal GPU: it needs "
                "macOS 12.3 or newer on Apple silicon, and a native arm64 Python (not one "
                "running under Rosetta)"
            )
        return None

    @classmethod
    def parse_devices(cls, devices: int | str | Sequence[int]) -> list[int]:
        """One device: ``1``, ``"1"``, ``-1``, ``"auto"``, ``[0]`` and ``"0"`` all mean it.
        More is refused, saying that MPS is one GPU that runs one process."""
        one = (1, -1, "1", "-1", "auto", "0", (0,), [0])
        text = devices.strip().lower() if isinstance(devices, str) else devices
        if isinstance(text, bool):
            pass
        elif text in one or (isinstance(text, (list, tuple)) and list(text) == [0]):
            if not cls.is_available():
                raise DeviceSelectionError(
                    f"devices={devices!r} asks for the MPS GPU, but {cls.unavailable_reason()}"
                )
            return [0]
        raise DeviceSelectionError(
            f"devices={devices!r} is not available on MPS: a Mac has one MPS GPU (index 0), and "
            "no torch.distributed backend takes MPS tensors, so it runs one process. Pass "
            "devices=1 (or 'auto'), or use accelerator='cpu' to run several processes"
        )

    @classmethod
    def get_device(cls, index: int) -> torch.device:
        return torch.device("mps", index)

    @classmethod
    def supports_precision(cls, precision_name: str, dtype: torch.dtype | None) -> str | None:
        if dtype == torch.float64:
            return (
                f"{precision_name} keeps tensors in float64, which Metal does not have (MPS "
                "tensors cannot be float64); use 32-true"
            )
        if dtype == torch.bfloat16 and not _macos_or_newer(*BF16_MACOS):
            return (
                f"{precision_name} computes in bfloat16, which MPS supports from macOS "
                f"{BF16_MACOS[0]} on; this Mac runs an older macOS. Use 16-mixed, or update macOS"
            )
        return super().supports_precision(precision_name, dtype)

    # -- an instance ----------------------------------------------------------------------

    def setup_device(self, device: torch.device) -> None:
        # one GPU: there is no current device to choose
        return None

    def memory_stats(self, device: torch.device) -> dict[str, int]:
        # Metal reports what tensors hold and what the driver holds for the process; its
        # "recommended" working-set size is a hint, not a total, so none is reported
        stats: dict[str, int] = {}
        with contextlib.suppress(RuntimeError, AttributeError):
            stats["allocated"] = int(torch.mps.current_allocated_memory())
            stats["reserved"] = int(torch.mps.driver_allocated_memory())
        return stats

    def device_name(self, device: torch.device) -> str:
        get_name = getattr(torch.backends.mps, "get_name", None)
        if callable(get_name):
            with contextlib.suppress(RuntimeError):
                return f"{get_name()} (mps)"
        return "Apple GPU (mps)"


def _macos_or_newer(major: int, minor: int) -> bool:
    check = getattr(torch.backends.mps, "is_macos_or_newer", None)
    if not callable(check):
        return False
    try:
        return bool(check(major, minor))
    except RuntimeError:
        return False
