"""The CPU accelerator."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import ClassVar

import torch

from switchyard import Accelerator, DeviceSelectionError


class CPUAccelerator(Accelerator):
    """The host CPU. It has no device indices: ``devices=N`` means N processes, each using the
    CPU (with ``torch`` threads divided between them by the strategy)."""

    device_type: ClassVar[str] = "cpu"
    distributed_backend: ClassVar[str | None] = "gloo"
    # the host CPU keeps working in a process forked after it was used (ddp_fork)
    forks_after_init: ClassVar[bool] = True

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def precision_warning(cls, precision_name: str, dtype: torch.dtype | None) -> str | None:
        if dtype != torch.float16 or torch.ops.mkldnn._is_mkldnn_fp16_supported():
            return None
        # measured: 16-mixed trains a small MLP about 8x slower than 32-true on such a CPU
        return (
            "this CPU has no float16 arithmetic (oneDNN needs AVX512-FP16 or AMX-FP16), so "
            "torch converts every float16 operation in software: several times slower than "
            "'32-true'. Use '32-true', or 'bf16-mixed' to save memory"
        )

    @classmethod
    def device_count(cls) -> int:
        return os.cpu_count() or 1

    @classmethod
    def auto_device_count(cls) -> int:
        return 1

    @classmethod
    def parse_devices(cls, devices: int | str | Sequence[int]) -> list[int]:
        if isinstance(devices, str):
            text = devices.strip().lower()
            if text == "auto":
                return [0]
            if "," in text:
                raise DeviceSelectionError(
                    f"devices={devices!r} lists device indices, but the CPU has none; pass "
                    "devices=N to run N processes on the CPU"
                )
            try:
                devices = int(text)
            except ValueError:
                raise DeviceSelectionError(
                    f"devices={devices!r} is not understood; on the CPU pass devices=N (N "
                    "processes) or 'auto' (one)"
                ) from None
        if isinstance(devices, bool) or not isinstance(devices, int):
            raise DeviceSelectionError(
                f"devices={devices!r}: the CPU has no device indices; pass devices=N to run N "
                "processes on the CPU, or 'auto' for one"
            )
        if devices == -1:
            return list(range(cls.device_count()))
        if devices < 1:
            raise DeviceSelectionError(
                f"devices={devices} is not a valid number of CPU processes; pass a positive "
                "number, -1 (one per core) or 'auto'"
            )
        return list(range(devices))

    @classmethod
    def get_device(cls, index: int) -> torch.device:
        return torch.device("cpu")

    def memory_stats(self, device: torch.device) -> dict[str, int]:
        try:
            import resource
        except ImportError:  # not on Windows
            return {}
        # ru_maxrss is KiB on Linux
        return {"peak_allocated": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}

    def device_name(self, device: torch.device) -> str:
        # the model name the kernel reports (Linux), else what platform knows
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
                for line in cpuinfo:
                    key, _, value = line.partition(":")
                    if key.strip() == "model name" and value.strip():
                        return value.strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"
