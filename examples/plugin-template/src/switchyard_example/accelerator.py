"""The ``example_cpu`` accelerator: the host CPU, its cores shared out between processes.

In an N-process run on one machine each process gets its own ``cores // N`` cores: torch's
thread pool is sized to them and, where the OS allows, the process is pinned to them, so the
processes do not fight over cores. It shows what an accelerator implements: availability and
device count (class methods, cheap, no device context), device setup and a teardown that
restores what setup changed, memory statistics and a device name.
"""

from __future__ import annotations

import os
import platform
from typing import ClassVar

import torch

from switchyard import Accelerator


def _usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


# taken when the module is imported, before any process pins itself to its share
HOST_CORES = _usable_cores()


def core_share(cores: list[int], local_rank: int, local_processes: int) -> list[int]:
    """The cores of process ``local_rank`` among ``local_processes`` on this machine: an equal,
    disjoint slice each, or one core each (shared round-robin) when there are more processes
    than cores."""
    per_process = max(len(cores) // max(local_processes, 1), 1)
    start = (local_rank * per_process) % len(cores)
    return cores[start : start + per_process]


class CoreShareAccelerator(Accelerator):
    """The CPU as N devices, one per core share. ``devices=N`` runs N processes; the CPU has no
    device indices, so every process's device is ``torch.device("cpu")`` and its share comes
    from its local rank (``LOCAL_RANK``/``LOCAL_WORLD_SIZE``, set by torchrun and by
    switchyard's launchers)."""

    device_type: ClassVar[str] = "cpu"
    distributed_backend: ClassVar[str | None] = "gloo"
    # the host CPU keeps working in a process forked after it was used (ddp_fork)
    forks_after_init: ClassVar[bool] = True

    def __init__(self) -> None:
        self._saved_threads: int | None = None
        self._saved_affinity: set[int] | None = None
        self._share: list[int] = list(HOST_CORES)

    @classmethod
    def is_available(cls) -> bool:
        return len(HOST_CORES) > 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if cls.is_available() else "this process may run on no CPU core"

    @classmethod
    def device_count(cls) -> int:
        return len(HOST_CORES)

    @classmethod
    def auto_device_count(cls) -> int:
        return 1

    @classmethod
    def get_device(cls, index: int) -> torch.device:
        return torch.device("cpu")

    def setup_device(self, device: torch.device) -> None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self._share = core_share(HOST_CORES, local_rank, local_processes)
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(len(self._share))
        if hasattr(os, "sched_setaffinity"):
            self._saved_affinity = os.sched_getaffinity(0)
            try:
                os.sched_setaffinity(0, self._share)
            except OSError:  # a container may forbid it; the thread count still applies
                self._saved_affinity = None

    def teardown(self) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._saved_affinity is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, self._saved_affinity)
            self._saved_affinity = None

    def memory_stats(self, device: torch.device) -> dict[str, int]:
        stats: dict[str, int] = {}
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # kilobytes on Linux, bytes on macOS
            stats["peak_allocated"] = peak if platform.system() == "Darwin" else peak * 1024
        except ImportError:  # Windows
            pass
        try:
            stats["total"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            pass
        return stats

    def device_name(self, device: torch.device) -> str:
        model = platform.processor() or platform.machine() or "CPU"
        return f"{model}, {len(self._share)} of {len(HOST_CORES)} core(s)"
