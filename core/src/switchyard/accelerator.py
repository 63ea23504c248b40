"""The Accelerator interface: one kind of device, described in PyTorch's own vocabulary."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

from switchyard.errors import DeviceSelectionError

DevicesArg = int | str | Sequence[int]
"""What users pass as ``devices=``: ``2``, ``-1`` (all), ``[0, 2]``, ``"0,1"``, ``"2"``, ``"auto"``."""


class Accelerator(ABC):
    """One kind of device (``cpu``, ``cuda``, ``xla``...) and how to use it.

    Implement this for new hardware and publish it through an
    :class:`~switchyard.AcceleratorEntry`. Class methods must work without creating any device
    context: selection calls them to decide whether the accelerator is usable at all. Import your
    runtime library (``torch_xla``, ``intel_extension_for_pytorch``) inside methods, not at the top
    of the module, so that discovery stays cheap.
    """

    device_type: ClassVar[str]
    """The ``torch.device`` type string, e.g. ``"cuda"``; used for ``torch.autocast`` too."""

    distributed_backend: ClassVar[str | None] = None
    """The default ``torch.distributed`` backend for this device (``"gloo"``, ``"nccl"``,
    ``"xccl"``), or ``None`` if it cannot run distributed strategies."""

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether at least one device of this kind can be used in this process."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """A sentence saying why the accelerator is not usable here, or ``None`` if it is.

        Shown by ``switchyard plugins`` and in selection errors. Override to be more specific
        than the default ("no device found").
        """
        if cls.is_available():
            return None
        return f"no {cls.device_type} device is available in this process"

    @classmethod
    @abstractmethod
    def device_count(cls) -> int:
        """How many devices of this kind this process can see."""

    @classmethod
    def auto_device_count(cls) -> int:
        """How many devices ``devices="auto"`` means. Default: all of them."""
        return max(cls.device_count(), 1)

    @classmethod
    def parse_devices(cls, devices: DevicesArg) -> list[int]:
        """Turn the user's ``devices`` argument into device indices, validating it.

        Accepts a positive count, ``-1`` for all devices, a list of indices, a comma-separated
        string of indices (``"0,1"``), a string count (``"2"``) or ``"auto"``. Raises
        :class:`~switchyard.DeviceSelectionError` naming what was asked and what exists.
        """
        count = cls.device_count()
        if isinstance(devices, str):
            text = devices.strip().lower()
            if text == "auto":
                return list(range(cls.auto_device_count()))
            if "," in text:
                try:
                    devices = [int(part) for part in text.split(",") if part.strip()]
                except ValueError:
                    raise DeviceSelectionError(
                        f"devices={devices!r} is not a comma-separated list of device indices; "
                        "pass e.g. devices='0,1', devices=2, devices=-1 or devices='auto'"
                    ) from None
            else:
                try:
                    devices = int(text)
                except ValueError:
                    raise DeviceSelectionError(
                        f"devices={devices!r} is not understood; pass a count (2), -1 for all, "
                        "a list of indices ([0, 1] or '0,1') or 'auto'"
                    ) from None
        if isinstance(devices, bool):
            raise DeviceSelectionError(
                f"devices={devices!r} is a bool; pass a count (2), -1, a list of indices or 'auto'"
            )
        if isinstance(devices, int):
            if devices == -1:
                if count < 1:
                    raise DeviceSelectionError(
                        f"devices=-1 asks for all {cls.device_type} devices, but none is visible"
                    )
                return list(range(count))
            if devices < 1:
                raise DeviceSelectionError(
                    f"devices={devices} is not a valid count; pass a positive number, -1 for all "
                    f"{count} visible {cls.device_type} device(s), or 'auto'"
                )
            if devices > count:
                raise DeviceSelectionError(
                    f"devices={devices} asks for {devices} {cls.device_type} devices, but only "
                    f"{count} visible; pass devices={count} or fewer, or devices=-1 for all"
                )
            return list(range(devices))
        indices = list(devices)
        if not indices:
            raise DeviceSelectionError("devices=[] selects no device; pass at least one index")
        if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
            raise DeviceSelectionError(f"devices={indices!r} must contain integer indices only")
        if len(set(indices)) != len(indices):
            raise DeviceSelectionError(f"devices={indices!r} names a device more than once")
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise DeviceSelectionError(
                f"devices={indices!r} names {cls.device_type} index {bad[0]}, but the visible "
                f"indices are {list(range(count))}"
            )
        return indices

    @classmethod
    def get_device(cls, index: int) -> torch.device:
        """The ``torch.device`` for a device index chosen by :meth:`parse_devices`."""
        return torch.device(cls.device_type, index)

    @classmethod
    def supports_precision(cls, precision_name: str, dtype: torch.dtype | None) -> str | None:
        """Whether a precision can run here: ``None`` if yes, otherwise the reason why not.

        ``dtype`` is the precision's compute dtype (``torch.bfloat16`` for ``"bf16-mixed"``).
        Default: autocast dtypes are accepted where ``torch.amp`` has autocast for the device.
        """
        if dtype is None or dtype in (torch.float32, torch.float64):
            return None
        if not torch.amp.autocast_mode.is_autocast_available(cls.device_type):
            return f"torch.autocast is not available for device type {cls.device_type!r}"
        return None

    def setup_device(self, device: torch.device) -> None:
        """Make ``device`` this process's current device. Called once per process, before any
        module or tensor is moved. Default: nothing."""

    def synchronize(self, device: torch.device | None = None) -> None:
        """Wait until all queued work on ``device`` has finished. Default: nothing (eager CPU)."""

    def memory_stats(self, device: torch.device) -> dict[str, int]:
        """Memory statistics in bytes. Known keys (report those you can):
        ``allocated``, ``reserved``, ``peak_allocated``, ``total``. Default: none."""
        return {}

    def empty_cache(self) -> None:
        """Release cached, unused device memory back to the device. Default: nothing."""

    def device_name(self, device: torch.device) -> str:
        """The hardware's name, for reports (``"NVIDIA H100 80GB HBM3"``). Default: what the
        device module's ``get_device_name`` says, where torch has one, else ``str(device)``."""
        module = getattr(torch, device.type, None)
        get_name = getattr(module, "get_device_name", None)
        if callable(get_name):
            try:
                return str(get_name(device))
            except Exception:  # a name is nice to have; never worth failing a report for
                pass
        return str(device)

    def teardown(self) -> None:
        """Release what :meth:`setup_device` acquired; the device must stay usable afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
