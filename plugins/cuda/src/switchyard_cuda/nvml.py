"""Questions about the GPUs that NVML answers without creating a CUDA context.

Selection asks them in the parent process, before any worker is forked: anything that goes
through the CUDA runtime there (``torch.cuda.get_device_capability`` initialises CUDA) would make
``fork`` start methods unusable. NVML is the library ``nvidia-smi`` uses; torch itself counts
devices through it for the same reason (``torch.cuda.device_count``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

_LIBRARY = "libnvidia-ml.so.1"
_NAME_LENGTH = 96  # NVML_DEVICE_NAME_V2_BUFFER_SIZE

LibraryLoader = Callable[[str], Any]


@dataclass(frozen=True)
class DeviceInfo:
    """One visible GPU as NVML describes it: ``DeviceInfo(index=0, name="NVIDIA H100 80GB HBM3",
    capability=(9, 0))``; ``index`` is the visible (torch) index."""

    index: int
    name: str
    capability: tuple[int, int]


def visible_devices(count: int, load: LibraryLoader = ctypes.CDLL) -> list[DeviceInfo] | None:
    """The name and compute capability of visible GPUs ``0..count-1``, or ``None`` when NVML
    cannot answer (no driver, a MIG or unknown ``CUDA_VISIBLE_DEVICES`` entry, an old driver).

    ``load`` opens the shared library; tests pass a stand-in, since this machine has none."""
    try:
        library = load(_LIBRARY)
    except OSError:
        return None
    if library.nvmlInit_v2() != 0:
        return None
    try:
        devices = []
        for index in range(count):
            info = _describe(library, index)
            if info is None:
                return None
            devices.append(info)
        return devices
    finally:
        library.nvmlShutdown()


def _describe(library: Any, index: int) -> DeviceInfo | None:
    try:
        # maps a visible index through CUDA_VISIBLE_DEVICES (ordinals or UUID prefixes) to
        # NVML's, which counts every GPU of the machine; private, hence the broad guard
        nvml_index = torch.cuda._get_nvml_device_index(index)
    except Exception:
        return None
    handle = ctypes.c_void_p()
    if library.nvmlDeviceGetHandleByIndex_v2(nvml_index, ctypes.byref(handle)) != 0:
        return None
    major, minor = ctypes.c_int(), ctypes.c_int()
    if library.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor)):
        return None
    name = ctypes.create_string_buffer(_NAME_LENGTH)
    if library.nvmlDeviceGetName(handle, name, _NAME_LENGTH) != 0:
        name.value = b"NVIDIA GPU"
    return DeviceInfo(index, name.value.decode(errors="replace"), (major.value, minor.value))
