"""The generic accelerator: a device a PyTorch extension registered, usable with no plugin.

A vendor's extension (``torch_npu``, PyTorch's reference ``torch_openreg``) renames torch's
PrivateUse1 backend with ``torch.utils.rename_privateuse1_backend("<name>")``, registers a
``torch.<name>`` device module, and is imported by every ``import torch`` through the
``torch.backends`` entry-point group. The built-in plugin then registers an accelerator of that
name whose every method is the :class:`~switchyard.Accelerator` default, PyTorch's
device-generic API (``torch.accelerator``, else ``torch.get_device_module``): what torch knows
of the device is all it uses, so ``Runtime(accelerator="<name>")`` and ``accelerator="auto"``
work before any switchyard plugin for the device exists.

A vendor's own plugin wins over it, in two ways:

- **by priority**: the generic entry's :data:`GENERIC_PRIORITY` is above the host CPU's (0) and
  below what any device plugin declares (cuda's is 100), so ``auto`` prefers every real device
  plugin and falls back to the generic accelerator before the CPU;
- **by claim**: an accelerator entry of any other plugin that has the device type's name, or
  whose class declares that ``device_type``, claims the device. The name then selects the
  plugin's entry (``PluginRegistry.get``, :func:`switchyard.registry.yields_to_plugins`), and
  ``auto`` skips the generic entry; asked for by name while a differently named entry claims
  its device type, selection says which entry to use instead.

Detection is one question to torch, the PrivateUse1 backend's name, which neither initialises
the device nor imports anything: the hook runs in every process that builds a registry.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from switchyard.accelerator import Accelerator
from switchyard.entries import AcceleratorEntry

GENERIC_PRIORITY = 10
"""``auto``'s priority for the generic accelerator: above the host CPU (0), below any plugin
written for a device (they declare more: cuda 100)."""

DEFAULT_PRIVATEUSE1_NAME = "privateuseone"
"""The PrivateUse1 backend's name until an extension renames it: no device is registered."""


def privateuse1_device_type() -> str | None:
    """The device type a PyTorch extension renamed the PrivateUse1 backend to (``"openreg"``,
    ``"npu"``), or ``None`` while it keeps torch's default name. Initialises nothing."""
    try:
        # the name torch.utils.rename_privateuse1_backend sets; torch has no public getter
        name = torch._C._get_privateuse1_backend_name()
    except (AttributeError, RuntimeError):
        return None
    if not isinstance(name, str) or not name or name == DEFAULT_PRIVATEUSE1_NAME:
        return None
    return name


class TorchDeviceAccelerator(Accelerator):
    """A device PyTorch knows through an extension and no plugin describes. It declares only
    its ``device_type``: availability, device count, the current device, synchronisation,
    memory statistics, seeding, autocast and the ``torch.distributed`` backend (none unless the
    extension registers one for the device) all come from PyTorch's device-generic API.

    One subclass per device type is made by :func:`accelerator_for`."""

    device_type: ClassVar[str] = DEFAULT_PRIVATEUSE1_NAME

    def __reduce__(self) -> tuple[Any, ...]:
        # the per-device subclass is made at run time: rebuild it rather than look it up
        return (_rebuild, (self.device_type,))

    def __repr__(self) -> str:
        return f"TorchDeviceAccelerator(device_type={self.device_type!r})"


@functools.cache
def accelerator_for(device_type: str) -> type[TorchDeviceAccelerator]:
    """The generic accelerator class of ``device_type`` (one class per type, made once)."""
    return type(
        "TorchDeviceAccelerator",
        (TorchDeviceAccelerator,),
        {
            "device_type": device_type,
            "__qualname__": f"TorchDeviceAccelerator[{device_type!r}]",
            "__doc__": f"The {device_type!r} device, through PyTorch's device-generic API.",
        },
    )


def _rebuild(device_type: str) -> TorchDeviceAccelerator:
    return accelerator_for(device_type)()


def entries() -> Iterator[AcceleratorEntry]:
    """The generic accelerator's entry, if an extension registered a PrivateUse1 device."""
    device_type = privateuse1_device_type()
    if device_type is None:
        return
    yield AcceleratorEntry(
        name=device_type,
        factory=accelerator_for(device_type),
        description=(
            f"The {device_type!r} device a PyTorch extension registers (PrivateUse1), through "
            "torch's device-generic API; a plugin for the device takes its place"
        ),
        priority=GENERIC_PRIORITY,
    )
