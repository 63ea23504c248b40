"""The Accelerator interface: one kind of device, described in PyTorch's own vocabulary.

Every default here asks PyTorch's device-generic API (``torch.accelerator`` for the current
accelerator, else ``torch.get_device_module(device_type)``), so any device torch knows, a
vendor's PrivateUse1 extension included, works with an accelerator that declares nothing but its
``device_type``. A plugin overrides only what is really special about its device.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from abc import ABC
from collections.abc import Callable, Iterable, Sequence, Sized
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from switchyard.errors import DeviceSelectionError, SelectionError
from switchyard.validation import MAX_DEVICES_PER_NODE

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

DevicesArg = int | str | Sequence[int]
"""What users pass as ``devices=``: ``2``, ``-1`` (all), ``[0, 2]``, ``"0,1"``, ``"2"``, ``"auto"``."""

BACKEND_FROM_TORCH = "auto"
"""The default of :attr:`Accelerator.distributed_backend`: the backend ``torch.distributed``
registers for the device type (``torch.distributed.Backend.default_device_backend_map``, which
``Backend.register_backend(..., devices=[...])`` extends), if that backend takes its tensors."""

# failures a device-generic query may raise on a backend that lacks the feature
_UNSUPPORTED = (RuntimeError, AttributeError, NotImplementedError, TypeError, AssertionError)


def device_module(device_type: str) -> ModuleType | None:
    """``torch.<device_type>`` as torch registers it (``torch.get_device_module``), or ``None``
    for a device type torch has no module for."""
    try:
        module = torch.get_device_module(device_type)
    except (RuntimeError, AttributeError, ValueError):
        return None
    return module if isinstance(module, ModuleType) else None


def is_current_accelerator(device_type: str) -> bool:
    """Whether ``device_type`` is the accelerator this torch build (or an autoloaded extension)
    reports through ``torch.accelerator``, whose API then answers for it."""
    try:
        current = torch.accelerator.current_accelerator(check_available=False)
    except _UNSUPPORTED:
        return False
    return current is not None and current.type == device_type


def _call(function: Callable[..., Any] | None, *args: Any) -> Any:
    return function(*args) if callable(function) else None


def ask_torch(device_type: str, generic: str, module_function: str, *args: Any) -> Any:
    """The device module's ``<module_function>(*args)`` where the module defines it; else
    ``torch.accelerator.<generic>(*args)`` when ``device_type`` is the current accelerator and
    torch's backend for it answers; ``None`` if neither exists. The module comes first because
    it is the device's own answer: for an extension that registers its device only from Python
    (a renamed PrivateUse1 backend without C++ hooks) ``torch.accelerator`` raises on some torch
    releases and silently does nothing on others (``synchronize`` on torch 2.9)."""
    function = getattr(device_module(device_type), module_function, None)
    refused: BaseException | None = None
    if callable(function):
        try:
            return function(*args)
        except _UNSUPPORTED as error:
            refused = error  # torch's generic API may still answer
    if is_current_accelerator(device_type):
        try:
            return getattr(torch.accelerator, generic)(*args)
        except _UNSUPPORTED:
            if refused is None:
                return None
    if refused is not None:
        raise refused
    return None


_COUNT_TEXT = re.compile(r"\s*\+?([0-9]+)\s*")


def check_devices_limit(devices: object) -> None:
    """Refuse a ``devices`` request for more than :data:`~switchyard.validation.MAX_DEVICES_PER_NODE`
    devices per node (a count, a string count, or a list of indices) before anything is built
    from it: ``devices=10**9`` would otherwise fill the memory with a list of indices. Selection
    calls this before any accelerator's :meth:`Accelerator.parse_devices`; values of other
    shapes are left to ``parse_devices``."""
    count: int | None = None
    if isinstance(devices, bool):
        return
    if isinstance(devices, int):
        count = devices
    elif isinstance(devices, str):
        match = _COUNT_TEXT.fullmatch(devices)
        if match is not None:
            digits = match.group(1).lstrip("0")
            count = int(digits or "0") if len(digits) <= 18 else MAX_DEVICES_PER_NODE + 1
        elif "," in devices:
            count = sum(1 for part in devices.split(",") if part.strip())
    elif isinstance(devices, Sized):
        count = len(devices)
    if count is not None and count > MAX_DEVICES_PER_NODE:
        shown = repr(devices)
        if len(shown) > 60:
            shown = f"<{type(devices).__name__} of {count}>"
        raise DeviceSelectionError(
            f"devices={shown} asks for {count} devices (processes) on one node, more than the "
            f"{MAX_DEVICES_PER_NODE} switchyard allows: each is a process with its own "
            "interpreter and torch. Pass a count the node's devices can carry, -1 for all "
            "of them, or 'auto'"
        )


def parse_backend(backend: str) -> dict[str, str]:
    """``"cpu:gloo,cuda:nccl"`` as ``{"cpu": "gloo", "cuda": "nccl"}``; a plain ``"gloo"`` as
    ``{"": "gloo"}`` (one backend for every device type)."""
    pairs: dict[str, str] = {}
    for part in backend.split(","):
        device, sep, name = part.strip().rpartition(":")
        if not name or (sep and not device):
            raise SelectionError(
                f"process group backend {backend!r} is not understood; write one backend "
                "('gloo') or device:backend pairs ('cpu:gloo,cuda:nccl')"
            )
        pairs[device.strip().lower()] = name.strip().lower()
    return pairs


class SlowPrecisionWarning(UserWarning):
    """The chosen precision runs here, but far slower than ``32-true``
    (:meth:`Accelerator.precision_warning` says why)."""


class Accelerator(ABC):
    """One kind of device (``cpu``, ``cuda``, ``xla``...) and how to use it.

    Implement this for new hardware and publish it through an
    :class:`~switchyard.AcceleratorEntry`. The shortest correct accelerator declares only
    :attr:`device_type`: every method defaults to PyTorch's device-generic API for that type.
    Override what your device does differently, and declare what it cannot do
    (:attr:`distributed_backend` ``= None``, :attr:`supports_sharding`, :attr:`forks_after_init`)
    so that selection refuses such strategies before any process starts.

    Class methods must work without creating any device context: selection calls them to decide
    whether the accelerator is usable at all. Import your runtime library (``torch_xla``,
    ``intel_extension_for_pytorch``) inside methods, not at the top of the module, so that
    discovery stays cheap.
    """

    device_type: ClassVar[str]
    """The ``torch.device`` type string, e.g. ``"cuda"``; used for ``torch.autocast`` too."""

    distributed_backend: ClassVar[str | None] = BACKEND_FROM_TORCH
    """The ``torch.distributed`` backend processes on this device talk through: a name
    (``"gloo"``), device:backend pairs for jobs that mix tensor kinds (``"cpu:gloo,cuda:nccl"``),
    ``None`` when the device cannot run multi-process strategies, or the default
    :data:`BACKEND_FROM_TORCH`: what ``torch.distributed`` registers for :attr:`device_type`.
    Read it through :meth:`process_group_backend`."""

    supports_sharding: ClassVar[bool] = True
    """Whether the backend's all-gather and reduce-scatter work on this device's tensors, as
    strategies that shard parameters over processes (FSDP, ZeRO-3) need; such strategies'
    entries say ``sharded=True``."""

    forks_after_init: ClassVar[bool] = False
    """Whether a process forked after this device was initialised can still use it. CUDA-like
    runtimes cannot, so ``fork`` start methods are refused once :meth:`is_initialized`; the
    host CPU can."""

    # -- the class: what selection asks, without creating any device context -------------

    @classmethod
    def process_group_backend(cls) -> str | None:
        """The backend string for ``torch.distributed.init_process_group``, or ``None`` when
        processes on this device cannot talk (see :attr:`distributed_backend`)."""
        declared = cls.distributed_backend
        if declared != BACKEND_FROM_TORCH:
            return declared
        import torch.distributed as dist

        if not dist.is_available():
            return None
        mapping = dist.Backend.default_device_backend_map
        capability = dist.Backend.backend_capability

        def takes(device_type: str) -> str | None:
            backend = mapping.get(device_type)
            if backend is None or device_type not in capability.get(backend, [device_type]):
                return None
            return backend

        backend = takes(cls.device_type)
        if backend is None:
            return None
        # a job on a device also has CPU tensors (metrics, object collectives): pair the
        # device's backend with the host's where they differ
        host = "cpu"
        host_backend = takes(host)
        if cls.device_type == host or host_backend in (None, backend):
            return backend
        return f"{host}:{host_backend},{cls.device_type}:{backend}"

    @classmethod
    def device_module(cls) -> ModuleType | None:
        """``torch.<device_type>``, where torch registers a module for the device type."""
        return device_module(cls.device_type)

    @classmethod
    def is_available(cls) -> bool:
        """Whether at least one device of this kind can be used in this process. Default:
        ``torch.accelerator.is_available()`` for the current accelerator, else the device
        module's ``is_available()``."""
        try:
            return bool(ask_torch(cls.device_type, "is_available", "is_available"))
        except _UNSUPPORTED:
            return False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """A sentence saying why the accelerator is not usable here, or ``None`` if it is.

        Shown by ``switchyard plugins`` and in selection errors. Override to be more specific
        than the default ("no device found").
        """
        if cls.is_available():
            return None
        if cls.device_module() is None and not is_current_accelerator(cls.device_type):
            return (
                f"torch knows no device type {cls.device_type!r} in this process (no "
                f"torch.{cls.device_type} module; is the PyTorch extension for it installed?)"
            )
        return f"no {cls.device_type} device is available in this process"

    @classmethod
    def device_count(cls) -> int:
        """How many devices of this kind this process can see. Default:
        ``torch.accelerator.device_count()`` or the device module's ``device_count()``."""
        try:
            return int(ask_torch(cls.device_type, "device_count", "device_count") or 0)
        except _UNSUPPORTED:
            return 0

    @classmethod
    def auto_device_count(cls) -> int:
        """How many devices ``devices="auto"`` means. Default: all of them where processes on
        them can talk (:meth:`process_group_backend`), else one: a job of several processes
        that cannot talk would only fail."""
        if cls.process_group_backend() is None:
            return 1
        return max(cls.device_count(), 1)

    @classmethod
    def is_initialized(cls) -> bool:
        """Whether this process already created the device's runtime context (which a forked
        child cannot inherit unless :attr:`forks_after_init`). Default: the device module's
        ``is_initialized()``, where it has one."""
        try:
            return bool(_call(getattr(cls.device_module(), "is_initialized", None)))
        except _UNSUPPORTED:
            return False

    @classmethod
    def parse_devices(cls, devices: DevicesArg) -> list[int]:
        """Turn the user's ``devices`` argument into device indices, validating it.

        Accepts a positive count, ``-1`` for all devices, a list of indices, a comma-separated
        string of indices (``"0,1"``), a string count (``"2"``) or ``"auto"``. Raises
        :class:`~switchyard.DeviceSelectionError` naming what was asked and what exists; a
        request above :data:`~switchyard.validation.MAX_DEVICES_PER_NODE` is refused first
        (:func:`check_devices_limit`).
        """
        check_devices_limit(devices)
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
        if not isinstance(devices, Iterable):
            raise DeviceSelectionError(
                f"devices={devices!r} ({type(devices).__name__}) is not understood; pass a "
                "count (2), -1 for all, a list of indices ([0, 1] or '0,1') or 'auto'"
            )
        # a generator has no length to check beforehand: take one more than the limit allows
        indices = list(itertools.islice(devices, MAX_DEVICES_PER_NODE + 1))
        check_devices_limit(indices)
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

    @classmethod
    def precision_warning(cls, precision_name: str, dtype: torch.dtype | None) -> str | None:
        """Why a precision that runs here runs far slower than ``32-true`` (emulated in
        software, say), or ``None``. ``dtype`` is the precision's compute dtype, or its
        parameter dtype for the ``-true`` precisions. Selection warns with it
        (:class:`SlowPrecisionWarning`). Default: ``None``."""
        return None

    # -- an instance: one process using its device ----------------------------------------

    def setup_device(self, device: torch.device) -> None:
        """Make ``device`` this process's current device. Called once per process, before any
        module or tensor is moved. Default: ``torch.accelerator.set_device_index`` (or the
        device module's ``set_device``) for an indexed device."""
        index: int | None = device.index  # None for an unindexed device such as the host CPU
        if index is None:
            return
        if is_current_accelerator(device.type):
            try:
                torch.accelerator.set_device_index(index)
                return
            except _UNSUPPORTED:
                pass
        _call(getattr(device_module(device.type), "set_device", None), device)

    def synchronize(self, device: torch.device | None = None) -> None:
        """Wait until all queued work on ``device`` (default: the current one) has finished.
        Default: ``torch.accelerator.synchronize`` or the device module's ``synchronize``."""
        device_type = device.type if device is not None else self.device_type
        ask_torch(device_type, "synchronize", "synchronize", *(() if device is None else (device,)))

    def current_stream(self, device: torch.device | None = None) -> Any:
        """The stream work is queued on (``torch.Stream`` or the device module's own), or
        ``None`` for a device without streams."""
        device_type = device.type if device is not None else self.device_type
        try:
            return ask_torch(device_type, "current_stream", "current_stream", device)
        except _UNSUPPORTED:
            return None

    def memory_stats(self, device: torch.device) -> dict[str, int]:
        """Memory statistics in bytes. Known keys (report those you can): ``allocated``,
        ``reserved``, ``peak_allocated``, ``total``. Default: ``torch.accelerator``'s memory
        functions, falling back to the device module's, leaving out what neither answers (an
        allocator that is not a ``DeviceAllocator`` has none)."""
        generic = torch.accelerator if is_current_accelerator(device.type) else None
        module = device_module(device.type)
        stats: dict[str, int] = {}
        queries = {
            "allocated": "memory_allocated",
            "reserved": "memory_reserved",
            "peak_allocated": "max_memory_allocated",
        }
        for key, function in queries.items():
            value = _first_answer(
                device, getattr(generic, function, None), getattr(module, function, None)
            )
            if value is not None:
                stats[key] = int(value)
        info = _first_answer(
            device, getattr(generic, "get_memory_info", None), getattr(module, "mem_get_info", None)
        )
        if isinstance(info, tuple) and len(info) == 2:
            stats["total"] = int(info[1])
        return stats

    def empty_cache(self) -> None:
        """Release cached, unused device memory back to the device. Default:
        ``torch.accelerator.empty_cache()`` or the device module's ``empty_cache``."""
        with contextlib.suppress(*_UNSUPPORTED):
            ask_torch(self.device_type, "empty_cache", "empty_cache")

    def manual_seed(self, seed: int) -> None:
        """Seed the random generators of every device of this kind. ``torch.manual_seed`` already
        seeds the devices torch registers; the default also calls the device module's
        ``manual_seed_all`` (or ``manual_seed``). Override for a device with a generator torch
        does not reach (XLA). Called by :func:`switchyard.seed_everything` in every process."""
        module = device_module(self.device_type)
        seeder = getattr(module, "manual_seed_all", None) or getattr(module, "manual_seed", None)
        with contextlib.suppress(*_UNSUPPORTED):
            _call(seeder, seed)

    def device_name(self, device: torch.device) -> str:
        """The hardware's name, for reports (``"NVIDIA H100 80GB HBM3"``). Default: what the
        device module's ``get_device_name`` says, where torch has one, else ``str(device)``."""
        get_name = getattr(device_module(device.type), "get_device_name", None)
        if callable(get_name):
            try:
                return str(get_name(device))
            except Exception:  # a name is nice to have; never worth failing a report for
                pass
        return str(device)

    def process_dataloader(self, dataloader: DataLoader[Any]) -> DataLoader[Any]:
        """The loader this process reads batches from, given the one the strategy prepared
        (its distributed sampler in place), for loaders whose batches the runtime moves to the
        device. An accelerator that loads better another way returns a re-created loader (CUDA
        pins host memory so that copies to the device run asynchronously). Default: unchanged.
        """
        return dataloader

    def teardown(self) -> None:
        """Release what :meth:`setup_device` acquired; the device must stay usable afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _first_answer(device: torch.device, *functions: Any) -> Any:
    """The first of ``functions(device)`` that answers; ``None`` if none does."""
    for function in functions:
        if not callable(function):
            continue
        try:
            return function(device)
        except _UNSUPPORTED:
            continue
    return None
