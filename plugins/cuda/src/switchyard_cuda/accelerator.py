"""The CUDA accelerator: NVIDIA GPUs through ``torch.cuda``.

Everything selection asks before processes start (is a GPU there, how many, which precisions)
is answered without initialising CUDA in the asking process: device counts come from
``torch.cuda.device_count()``, which asks NVML while CUDA is not initialised, and compute
capabilities from NVML directly (:mod:`switchyard_cuda.nvml`). ``ddp_fork`` and other ``fork``
start methods therefore stay usable after ``Runtime(...)``; once the process has used CUDA itself,
``forks_after_init = False`` makes selection refuse them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader

from switchyard import Accelerator, DeviceSelectionError
from switchyard_cuda import nvml
from switchyard_cuda.pinned_memory import pinned
from switchyard_cuda.visibility import visibility_note

BF16_CAPABILITY = (8, 0)
"""The first compute capability (Ampere) with bfloat16 in its tensor cores; older GPUs emulate
bfloat16 arithmetic, slower than float32."""

# where torch.backends.<name>.<part>.fp32_precision chooses between "tf32" and "ieee"
_TF32_SWITCHES = (("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"))


def is_rocm_build() -> bool:
    """Whether this torch is built for ROCm (``torch.version.hip`` set), where ``torch.cuda``
    drives AMD GPUs and the ``rocm`` accelerator applies instead of this one."""
    return getattr(torch.version, "hip", None) is not None


def is_cuda_build() -> bool:
    """Whether this torch is built with CUDA (``torch.version.cuda`` set, not a ROCm build)."""
    return getattr(torch.version, "cuda", None) is not None and not is_rocm_build()


class CUDAAccelerator(Accelerator):
    """NVIDIA GPUs, one process per GPU, talking through NCCL (and gloo for CPU tensors).

    Args:
        tf32: ``True`` lets float32 matrix products and cuDNN convolutions compute in
            TensorFloat-32 (Ampere and newer: faster, 10-bit mantissa), ``False`` forces full
            float32, ``None`` (the default) leaves torch's settings exactly as they are.
            Applied in every process by :meth:`setup_device`; :meth:`teardown` restores what
            was there before. Choose it explicitly: switchyard never changes it on its own.
        pin_memory: re-create data loaders with ``pin_memory=True`` in
            :meth:`process_dataloader`, so host-to-GPU copies of batches run asynchronously
            (default ``True``; a loader that already pins memory is left alone).

    Pass an instance to choose them: ``Runtime(accelerator=CUDAAccelerator(tf32=True))``.
    """

    device_type: ClassVar[str] = "cuda"
    # nccl for GPU tensors; gloo for the CPU tensors the same job reduces (metrics, objects)
    distributed_backend: ClassVar[str | None] = "cpu:gloo,cuda:nccl"
    supports_sharding: ClassVar[bool] = True
    # a CUDA context does not survive fork: children of a process that used CUDA fail
    forks_after_init: ClassVar[bool] = False

    def __init__(self, *, tf32: bool | None = None, pin_memory: bool = True) -> None:
        if tf32 is not None and not isinstance(tf32, bool):
            raise TypeError(f"tf32={tf32!r} must be True, False or None (leave torch's setting)")
        self.tf32 = tf32
        self.pin_memory = bool(pin_memory)
        self._saved_tf32: list[tuple[Any, str, Any]] | None = None

    # -- the class: answered without initialising CUDA ------------------------------------

    @classmethod
    def is_available(cls) -> bool:
        # device_count(), not torch.cuda.is_available(): the latter calls cudaGetDeviceCount,
        # which initialises the driver (unless PYTORCH_NVML_BASED_CUDA_CHECK=1)
        return cls.device_count() > 0

    @classmethod
    def device_count(cls) -> int:
        if not is_cuda_build():
            return 0
        return max(int(torch.cuda.device_count()), 0)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if is_rocm_build():
            return (
                f"this torch is a ROCm build (torch.version.hip={torch.version.hip!r}): the rocm "
                "accelerator applies (accelerator='rocm' or 'gpu')"
            )
        if not is_cuda_build():
            return (
                f"this torch ({torch.__version__}) is built without CUDA; install a CUDA build "
                "of torch (https://pytorch.org/get-started/locally/) to use NVIDIA GPUs"
            )
        count = cls.device_count()
        if count > 0:
            return None
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            return (
                f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: "
                f"{visibility_note(0)}; or no GPU or driver is present (nvidia-smi lists what "
                "the driver sees)"
            )
        return (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no NVIDIA GPU: no GPU is "
            "present, or its driver is not loaded (nvidia-smi lists what the driver sees)"
        )

    @classmethod
    def is_initialized(cls) -> bool:
        return is_cuda_build() and bool(torch.cuda.is_initialized())

    @classmethod
    def parse_devices(cls, devices: int | str | Sequence[int]) -> list[int]:
        """As :meth:`Accelerator.parse_devices`, over the GPUs ``CUDA_VISIBLE_DEVICES`` makes
        visible (indices count the visible GPUs); a refusal says what that variable selects."""
        try:
            return super().parse_devices(devices)
        except DeviceSelectionError as error:
            raise DeviceSelectionError(f"{error}; {visibility_note(cls.device_count())}") from None

    @classmethod
    def supports_precision(cls, precision_name: str, dtype: torch.dtype | None) -> str | None:
        if dtype == torch.bfloat16:
            lacking = [info for info in cls.visible_devices() if info.capability < BF16_CAPABILITY]
            if lacking:
                first = lacking[0]
                return (
                    f"{precision_name} computes in bfloat16, which needs compute capability "
                    f"{BF16_CAPABILITY[0]}.{BF16_CAPABILITY[1]} (Ampere) or newer, but visible GPU "
                    f"{first.index} ({first.name}) has {first.capability[0]}."
                    f"{first.capability[1]} and would only emulate it, slower than float32; use "
                    "16-mixed, or hide that GPU with CUDA_VISIBLE_DEVICES"
                )
        return super().supports_precision(precision_name, dtype)

    @classmethod
    def visible_devices(cls) -> list[nvml.DeviceInfo]:
        """Name and compute capability of every visible GPU, without initialising CUDA where
        it is not yet (NVML); empty when they cannot be known here, which accepts rather than
        refuses (torch's autocast still refuses bfloat16 where the device has none at all)."""
        count = cls.device_count()
        if count == 0:
            return []
        if torch.cuda.is_initialized():
            return [
                nvml.DeviceInfo(i, torch.cuda.get_device_name(i), _capability(i))
                for i in range(count)
            ]
        return nvml.visible_devices(count) or []

    # -- an instance: one process using its GPU -------------------------------------------

    def setup_device(self, device: torch.device) -> None:
        torch.cuda.set_device(device)
        if self.tf32 is not None:
            self._saved_tf32 = _tf32_state()
            _set_tf32(self.tf32)

    def teardown(self) -> None:
        if self._saved_tf32 is not None:
            _restore_tf32(self._saved_tf32)
            self._saved_tf32 = None

    def process_dataloader(self, dataloader: DataLoader[Any]) -> DataLoader[Any]:
        """The loader the runtime iterates: re-created with ``pin_memory=True`` unless
        ``pin_memory=False`` was chosen (see :mod:`switchyard_cuda.pinned_memory`)."""
        return pinned(dataloader) if self.pin_memory else dataloader

    def device_name(self, device: torch.device) -> str:
        return str(torch.cuda.get_device_name(device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tf32={self.tf32!r}, pin_memory={self.pin_memory!r})"


def _capability(index: int) -> tuple[int, int]:
    major, minor = torch.cuda.get_device_capability(index)
    return int(major), int(minor)


def _tf32_switches() -> list[tuple[Any, str]]:
    """The (object, attribute) pairs that say whether float32 products may use TF32: the
    ``fp32_precision`` switches ("tf32"/"ieee") where torch has them (2.9 and newer), else the
    older ``allow_tf32`` flags. torch refuses a mix of the two, so only one kind is touched."""
    if hasattr(torch.backends, "fp32_precision"):
        return [
            (getattr(getattr(torch.backends, name), part), "fp32_precision")
            for name, part in _TF32_SWITCHES
        ]
    return [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]


def _tf32_state() -> list[tuple[Any, str, Any]]:
    return [(owner, attr, getattr(owner, attr)) for owner, attr in _tf32_switches()]


def _set_tf32(enabled: bool) -> None:
    for owner, attr in _tf32_switches():
        if attr == "fp32_precision":
            setattr(owner, attr, "tf32" if enabled else "ieee")
        else:
            setattr(owner, attr, enabled)


def _restore_tf32(state: list[tuple[Any, str, Any]]) -> None:
    for owner, attr, value in state:
        setattr(owner, attr, value)
