"""What the kit asks of selection, in this process and without starting any: whether the backend
an accelerator declares can really carry its processes, and whether selection refuses a
strategy for an accelerator that declares it cannot carry it.

Nothing here imports pytest; the checks in :mod:`switchyard.testing.suite` turn the answers
into outcomes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from switchyard.accelerator import Accelerator, parse_backend
from switchyard.entries import AcceleratorEntry
from switchyard.errors import SelectionError
from switchyard.hookspecs import hookimpl
from switchyard.runtime import Runtime

CAPABILITY_PROCESSES = 2
"""Processes the refusal checks ask selection for: the fewest that need a process group."""


def backend_problem(backend: str, device_type: str) -> str | None:
    """Why processes on ``device_type`` could not create a process group with ``backend`` (as
    ``Accelerator.process_group_backend()`` spells it) in this torch build, or ``None``: every
    backend named must be available here, and the one for the device's tensors must take them
    (``torch.distributed.Backend.backend_capability``, where torch records it)."""
    import torch.distributed as dist

    if not dist.is_available():
        return "this torch build has no torch.distributed"
    try:
        pairs = parse_backend(backend)
    except SelectionError as error:
        return str(error)
    for name in dict.fromkeys(pairs.values()):
        if not dist.is_backend_available(name):
            return f"torch.distributed backend {name!r} is not available in this torch build"
    carrier = pairs.get(device_type, pairs.get(""))
    if carrier is None:
        return f"{backend!r} names no backend for {device_type!r} tensors"
    takes = dist.Backend.backend_capability.get(carrier)
    if takes is not None and device_type not in takes:
        return (
            f"torch.distributed backend {carrier!r} takes {', '.join(takes)} tensors, not "
            f"{device_type!r} ones"
        )
    return None


def capability_clone(cls: type[Accelerator], **declared: Any) -> type[Accelerator]:
    """``cls`` with the class attributes in ``declared`` (``distributed_backend=None``,
    ``supports_sharding=False``), usable and seeing :data:`CAPABILITY_PROCESSES` devices
    whatever this machine has, so that selection answers only about what is declared."""

    def device_count(clone: type[Accelerator]) -> int:
        return max(cls.device_count(), CAPABILITY_PROCESSES)

    def is_available(clone: type[Accelerator]) -> bool:
        return True

    def unavailable_reason(clone: type[Accelerator]) -> str | None:
        return None

    attributes: dict[str, Any] = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "device_count": classmethod(device_count),
        "is_available": classmethod(is_available),
        "unavailable_reason": classmethod(unavailable_reason),
        **declared,
    }
    return type(cls.__name__, (cls,), attributes)


class _AcceleratorPlugin:
    """Registers one accelerator under a name, passed in code so that it wins the name over the
    installed plugin that registers it."""

    def __init__(self, name: str, cls: type[Accelerator]) -> None:
        self.name = name
        self.cls = cls

    @hookimpl
    def switchyard_accelerators(self) -> Iterator[AcceleratorEntry]:
        yield AcceleratorEntry(
            name=self.name,
            factory=self.cls,
            description="the conformance kit's stand-in for the accelerator under test",
        )


def select_with(
    name: str, cls: type[Accelerator], strategy: str, precision: str, devices: int
) -> Runtime:
    """A runtime selected (not launched) for ``strategy`` on accelerator ``cls`` registered as
    ``name``; raises what selection raises."""
    return Runtime(
        accelerator=name,
        strategy=strategy,
        devices=devices,
        num_nodes=1,
        precision=precision,
        environment="local",
        plugins=[_AcceleratorPlugin(name, cls)],
    )


def spell(declared: Mapping[str, Any]) -> str:
    """``"distributed_backend=None"``, for messages."""
    return ", ".join(f"{key}={value!r}" for key, value in declared.items())
