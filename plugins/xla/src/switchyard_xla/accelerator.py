"""The XLA accelerator: devices of torch_xla's PJRT runtime (TPU, GPU, CPU).

torch_xla chooses its device kind from ``PJRT_DEVICE``; when that is unset, importing it picks
a TPU where libtpu and a TPU chip are present, and otherwise falls back to XLA's CPU device with
a warning. That fallback is not a reason to prefer XLA over the plain CPU, so the accelerator is
usable only where a PJRT device is named or a TPU is found.

Nothing here may start the PJRT runtime before ``torch_xla.launch`` forks its processes
(torch_xla refuses to launch once it is running), so device counts come from what torch_xla
reads before starting: the TPU chips on the PCI bus, ``CPU_NUM_DEVICES``, ``GPU_NUM_DEVICES``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import sys
from pathlib import Path
from typing import ClassVar

import torch

from switchyard import Accelerator

PJRT_DEVICE = "PJRT_DEVICE"

# what torch_xla._internal.tpu.num_available_chips() looks for, read here without importing
# torch_xla (whose import alone sets PJRT_DEVICE)
_GOOGLE_PCI_VENDOR = "0x1ae0"
# v2/v3, v4, v5e, v6e, two test parts, 7x (torch_xla 2.9)
_TPU_PCI_DEVICES = {"0x0027", "0x005e", "0x0063", "0x006f", "0x0056", "0x0062", "0x0076"}


def tpu_chips() -> int:
    """The TPU chips attached through PCI, counted as torch_xla counts them."""
    chips = 0
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if Path(vendor).read_text().strip() != _GOOGLE_PCI_VENDOR:
                continue
            device = Path(vendor).with_name("device").read_text().strip()
        except OSError:
            continue
        chips += device in _TPU_PCI_DEVICES
    return chips


def pjrt_device() -> str | None:
    """The PJRT device kind this process uses (``"TPU"``, ``"CUDA"``, ``"CPU"``...): the one
    ``PJRT_DEVICE`` names, else ``"TPU"`` where torch_xla would find one, else ``None``."""
    named = os.environ.get(PJRT_DEVICE, "").strip()
    if named:
        # torch_xla reads "CUDA_<n>"-style values by their first part
        return named.split("_")[0].upper()
    if importlib.util.find_spec("libtpu") is not None and tpu_chips() > 0:
        return "TPU"
    return None


def _count_variable(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    try:
        count = int(value)
    except ValueError:
        return None
    return count if count > 0 else None


def runtime_started() -> bool:
    """Whether this process already started torch_xla's PJRT runtime (without importing
    torch_xla when nothing did)."""
    if "torch_xla" not in sys.modules:
        return False
    import torch_xla

    return bool(torch_xla._XLAC._xla_runtime_is_initialized())


class XLAAccelerator(Accelerator):
    """An XLA device of torch_xla's PJRT runtime.

    Computation on it is lazy: operations record a graph that XLA compiles and runs when a step
    ends (``torch_xla.sync()``, which the XLA strategies call after every optimizer step) or a
    value is read. Moving a module to it creates new ``Parameter`` objects; the runtime
    re-points optimizers created before setup at them.
    """

    device_type: ClassVar[str] = "xla"
    # torch_xla's own c10d backend (torch_xla.distributed.xla_backend). It registers itself for
    # the device types "x", "l" and "a" (a string taken for a list), so the default lookup by
    # device type would find none: it is named here
    distributed_backend: ClassVar[str | None] = "xla"
    # FSDP2 and ZeRO-3 shard over torch.distributed collectives, which XLA tensors do not take
    # that way; xla_spmd shards through XLA's compiler (GSPMD) instead
    supports_sharding: ClassVar[bool] = False
    forks_after_init: ClassVar[bool] = False

    @classmethod
    def process_group_backend(cls) -> str | None:
        with contextlib.suppress(ImportError):
            # registers the "xla" backend with torch.distributed in this process
            import torch_xla.distributed.xla_backend  # noqa: F401
        return cls.distributed_backend

    @classmethod
    def is_available(cls) -> bool:
        return importlib.util.find_spec("torch_xla") is not None and pjrt_device() is not None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("torch_xla") is None:
            return "torch_xla is not installed (pip install './core[xla]')"
        if pjrt_device() is None:
            return (
                "no PJRT device is chosen: set PJRT_DEVICE (TPU, CUDA, CPU...); on a TPU host "
                "torch_xla finds the TPU itself when libtpu is installed (pip install "
                "'torch_xla[tpu]')"
            )
        return None

    @classmethod
    def device_count(cls) -> int:
        kind = pjrt_device()
        if kind is None:
            return 0
        if kind == "CPU":
            return _count_variable("CPU_NUM_DEVICES") or 1
        if kind == "TPU":
            return tpu_chips() or _count_variable("TPU_NUM_DEVICES") or 1
        if kind in ("CUDA", "GPU"):
            # NVML-based: counts without creating a CUDA context
            return _count_variable("GPU_NUM_DEVICES") or torch.cuda.device_count()
        if runtime_started():
            import torch_xla.runtime as xr

            return int(xr.addressable_runtime_device_count())
        # another PJRT plugin (NEURON...): counting would start the runtime before launch
        return 1

    @classmethod
    def auto_device_count(cls) -> int:
        # XLA's CPU devices run as threads of one process, where torch_xla's collectives do
        # not work (pytorch/xla#9089): 'auto' there means one
        if pjrt_device() == "CPU":
            return 1
        return max(cls.device_count(), 1)

    @classmethod
    def is_initialized(cls) -> bool:
        return runtime_started()

    @classmethod
    def supports_precision(cls, precision_name: str, dtype: torch.dtype | None) -> str | None:
        kind = pjrt_device()
        if dtype == torch.float16:
            return (
                "torch_xla 2.9 autocasts and scales gradients for bfloat16 only "
                "(torch_xla.amp.autocast turns float16 autocast off); use bf16-mixed or "
                "bf16-true"
            )
        if dtype == torch.float64 and kind in ("TPU", "NEURON"):
            return f"XLA:{kind} has no float64 arithmetic; use 32-true"
        if dtype is None or dtype in (torch.float32, torch.float64, torch.bfloat16):
            return None
        return f"XLA precisions are float32, bfloat16 and float64, not {dtype}"

    # -- an instance: one process using its device ----------------------------------------

    def setup_device(self, device: torch.device) -> None:
        import torch_xla
        import torch_xla.runtime as xr

        if device.index is not None and not xr.is_spmd():
            torch_xla.device(device.index)  # makes it the default device of this process
        # start the runtime now: torch's autograd engine counts a device type's devices when
        # it first runs, and XLA reports its devices only once its runtime has started
        torch.empty(0, device=device).cpu()
        self._apply_seed()

    def synchronize(self, device: torch.device | None = None) -> None:
        import torch_xla
        import torch_xla.core.xla_model as xm

        # run what was recorded, then wait until the device has finished it
        torch_xla.sync()
        xm.wait_device_ops()

    def current_stream(self, device: torch.device | None = None) -> None:
        return None  # XLA orders work in its graphs, not in streams

    def memory_stats(self, device: torch.device) -> dict[str, int]:
        import torch_xla.core.xla_model as xm

        try:
            info = xm.get_memory_info(device)
        except RuntimeError:  # XLA's CPU device keeps no allocator statistics
            return {}
        stats: dict[str, int] = {}
        for key, name in (
            ("allocated", "bytes_used"),
            ("peak_allocated", "peak_bytes_used"),
            ("total", "bytes_limit"),
        ):
            if name in info:
                stats[key] = int(info[name])
        return stats

    def empty_cache(self) -> None:
        pass  # PJRT frees buffers when their tensors die; there is no cache to empty

    _pending_seed: int | None = None

    def manual_seed(self, seed: int) -> None:
        # torch.manual_seed does not reach XLA's generator. Seeding it starts the runtime, so a
        # seed set before the processes exist is applied by setup_device
        self._pending_seed = seed
        if runtime_started():
            self._apply_seed()

    def _apply_seed(self) -> None:
        if self._pending_seed is None:
            return
        import torch_xla.core.xla_model as xm

        xm.set_rng_state(self._pending_seed)

    def device_name(self, device: torch.device) -> str:
        try:
            import torch_xla.core.xla_model as xm

            return f"XLA:{xm.xla_device_hw(device)} {xm.xla_device_kind(device)}".strip()
        except Exception:  # a name is nice to have; never worth failing a report for
            return str(device)
