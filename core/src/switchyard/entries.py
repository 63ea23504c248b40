"""The records registration hooks return: one small frozen dataclass per kind of plugin.

A reader learns what to return from a hook by reading one class here. Entries never import their
implementation: ``factory`` is either the class itself (for light, always-importable code) or a
``"module:attr"`` string resolved by :meth:`Entry.load` only when a user selects the entry.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal

EntryKind = Literal["accelerator", "strategy", "precision", "environment", "logger"]

_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


def normalize_name(name: str) -> str:
    """Names are compared lower-case with surrounding whitespace removed (``" DDP "`` is ``ddp``)."""
    return name.strip().lower()


class EntryError(ValueError):
    """An entry returned by a plugin is malformed (bad name, bad factory string...)."""


def _as_tuple(value: Any) -> tuple[Any, ...]:
    # aliases="bf16" (a forgotten comma in ("bf16",)) means one name, not four letters
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _missing(modules: tuple[str, ...]) -> tuple[str, ...]:
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return tuple(missing)


def _import(target: str) -> Any:
    """The object a ``"module:attr.attr"`` string names, imported."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Entry:
    """Fields shared by every kind of entry.

    name:
        What users type, e.g. ``"cuda"``, ``"ddp_spawn"``, ``"bf16-mixed"``. Lower case letters,
        digits, ``_``, ``-`` and ``.``.
    factory:
        The implementation: a class (or any callable returning an instance), or a lazy
        ``"package.module:attr"`` string, e.g. ``"switchyard_ddp.strategy:DDPStrategy"``.
    description:
        One line shown by ``switchyard plugins``, e.g. ``"NVIDIA GPUs through torch.cuda"``.
    init_args:
        Keyword arguments the factory is called with, before the user's own, e.g.
        ``{"start_method": "spawn"}``. Stored read-only.
    priority:
        Higher wins when the user asks for ``"auto"``, e.g. ``cuda`` is 100 and ``cpu`` is 0.
    requires:
        Top-level modules that must be importable for the entry to be usable, e.g.
        ``("torch_xla",)``. Checked with :func:`importlib.util.find_spec`, which imports nothing.
    aliases:
        Other names for the same entry, e.g. ``("bf16",)`` for ``"bf16-mixed"``.
    """

    kind: ClassVar[EntryKind]
    """The kind of piece this entry registers (``"accelerator"``, ``"strategy"``...); each entry
    class sets it."""

    name: str
    factory: Any
    description: str = ""
    init_args: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0
    requires: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise EntryError(
                f"{type(self).__name__} name must be a string, got {type(self.name).__name__}: "
                f"{self.name!r}"
            )
        # normalise once here so every consumer compares the same spelling
        object.__setattr__(self, "name", normalize_name(self.name))
        object.__setattr__(
            self, "aliases", tuple(normalize_name(str(a)) for a in _as_tuple(self.aliases))
        )
        object.__setattr__(self, "requires", _as_tuple(self.requires))
        object.__setattr__(self, "init_args", MappingProxyType(dict(self.init_args)))
        for name in (self.name, *self.aliases):
            if not _NAME_PATTERN.match(name):
                raise EntryError(
                    f"{type(self).__name__} name {name!r} is not valid: use lower-case letters, "
                    "digits, '_', '-' and '.', starting with a letter or digit"
                )
        if isinstance(self.factory, str):
            module, sep, attr = self.factory.partition(":")
            if not sep or not module or not attr:
                raise EntryError(
                    f"{type(self).__name__} {self.name!r}: factory {self.factory!r} must be "
                    "'package.module:attribute'"
                )
        elif not callable(self.factory):
            raise EntryError(
                f"{type(self).__name__} {self.name!r}: factory must be a callable or a "
                f"'module:attr' string, got {type(self.factory).__name__}"
            )

    @property
    def names(self) -> tuple[str, ...]:
        """The name followed by its aliases."""
        return (self.name, *self.aliases)

    def missing_requirements(self) -> tuple[str, ...]:
        """The modules from ``requires`` that cannot be found, without importing any of them."""
        return _missing(self.requires)

    def load(self) -> Any:
        """Import and return the factory (the class), resolving a ``"module:attr"`` string."""
        if not isinstance(self.factory, str):
            return self.factory
        return _import(self.factory)

    def create(self, **kwargs: Any) -> Any:
        """Instantiate: the factory called with ``init_args`` updated by ``kwargs``."""
        return self.load()(**{**self.init_args, **kwargs})


@dataclass(frozen=True)
class AcceleratorEntry(Entry):
    """An accelerator: one kind of device and how to use it.

    The factory builds an :class:`~switchyard.Accelerator`. Example::

        AcceleratorEntry(name="cuda", factory="switchyard_cuda.accelerator:CUDAAccelerator",
                         description="NVIDIA GPUs through torch.cuda", priority=100)
    """

    kind: ClassVar[EntryKind] = "accelerator"


@dataclass(frozen=True)
class StrategyEntry(Entry):
    """A strategy: how a model and its data are spread over processes and devices.

    accelerators:
        Names of the accelerators it works with, e.g. ``("cpu", "cuda")``; ``None`` means any
        accelerator that satisfies the strategy's own checks.
    precisions:
        Names of the precisions it works with; ``None`` means any.
    distributed:
        ``True`` if it runs one process per device, talking through ``torch.distributed`` (DDP,
        FSDP): the accelerator must declare a backend
        (:meth:`~switchyard.Accelerator.process_group_backend`). ``False`` for strategies that
        drive exactly one device in one process. ``strategy="auto"`` picks among
        non-distributed entries for one device and distributed ones for more.
    sharded:
        ``True`` if it shards parameters over processes with all-gather and reduce-scatter
        (FSDP, ZeRO-3): the accelerator must declare
        :attr:`~switchyard.Accelerator.supports_sharding`.

    Example::

        StrategyEntry(name="ddp_spawn", factory="switchyard_ddp.strategy:DDPStrategy",
                      init_args={"start_method": "spawn"}, distributed=True)
    """

    kind: ClassVar[EntryKind] = "strategy"

    accelerators: tuple[str, ...] | None = None
    precisions: tuple[str, ...] | None = None
    distributed: bool = False
    sharded: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for attr in ("accelerators", "precisions"):
            value = getattr(self, attr)
            if value is not None:
                object.__setattr__(self, attr, tuple(normalize_name(v) for v in _as_tuple(value)))


@dataclass(frozen=True)
class PrecisionEntry(Entry):
    """A numerical precision: which dtypes parameters and computation use.

    accelerators:
        Accelerator names it is restricted to, e.g. ``("cuda",)`` for Transformer Engine;
        ``None`` means any accelerator that supports its dtype (see
        :meth:`~switchyard.Accelerator.supports_precision`).

    Example::

        PrecisionEntry(name="bf16-mixed", factory="switchyard.builtin.precisions:MixedPrecision",
                       init_args={"dtype": "bfloat16"}, aliases=("bf16",))
    """

    kind: ClassVar[EntryKind] = "precision"

    accelerators: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.accelerators is not None:
            object.__setattr__(
                self, "accelerators", tuple(normalize_name(v) for v in _as_tuple(self.accelerators))
            )


@dataclass(frozen=True)
class EnvironmentEntry(Entry):
    """A cluster environment: where ranks, world size and the rendezvous address come from.

    The factory builds a :class:`~switchyard.ClusterEnvironment`; its ``detect()`` class method
    says whether the current process runs under it. Among detected environments the highest
    ``priority`` wins (``torchelastic`` above ``slurm`` above ``local``).

    detect_variables:
        Environment variables at least one of which ``detect()`` needs set to return ``True``,
        e.g. ``("SLURM_NTASKS",)``. When none of them is set, ``environment="auto"`` passes
        over the entry without importing its factory, so a script's start-up does not import
        every scheduler's module. Empty (the default): the factory is always imported and
        asked. Naming a variable that ``detect()`` does not need is harmless (it only costs the
        import); leaving out one it can be detected without is a bug: the environment would
        never be detected when only that one is set.

    Example::

        EnvironmentEntry(name="slurm", factory="switchyard.builtin.environments.slurm:SLURMEnvironment",
                         priority=60, detect_variables=("SLURM_NTASKS",))
    """

    kind: ClassVar[EntryKind] = "environment"

    detect_variables: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        variables = _as_tuple(self.detect_variables)
        for variable in variables:
            if not isinstance(variable, str) or not variable or "=" in variable:
                raise EntryError(
                    f"EnvironmentEntry {self.name!r}: detect_variables must be names of "
                    f"environment variables, got {variable!r}"
                )
        object.__setattr__(self, "detect_variables", variables)

    def may_detect(self, environ: Mapping[str, str]) -> bool:
        """Whether ``detect()`` can be ``True`` in ``environ``: some ``detect_variables`` is set,
        or none are declared."""
        return not self.detect_variables or any(v in environ for v in self.detect_variables)


@dataclass(frozen=True)
class LoggerEntry(Entry):
    """A logger: where ``runtime.log`` and ``runtime.log_dict`` send metrics (a CSV file,
    TensorBoard, an experiment tracker).

    The factory builds a :class:`~switchyard.Logger`; users select it by name,
    ``Runtime(loggers="wandb")``, and the factory is called with ``init_args`` only (a user who
    wants other arguments creates the logger and passes the instance). It is imported and
    created only when selected, so a tracker's client library is never imported by discovery
    or by ``switchyard plugins``. ``priority`` is not used: loggers are never chosen by
    ``"auto"``.

    Example::

        LoggerEntry(name="wandb", factory="switchyard_wandb.logger:WandbLogger",
                    description="Weights & Biases runs", requires=("wandb",))
    """

    kind: ClassVar[EntryKind] = "logger"


ENTRY_TYPES: Mapping[EntryKind, type[Entry]] = MappingProxyType(
    {
        "accelerator": AcceleratorEntry,
        "strategy": StrategyEntry,
        "precision": PrecisionEntry,
        "environment": EnvironmentEntry,
        "logger": LoggerEntry,
    }
)

HOOK_FOR_KIND: Mapping[EntryKind, str] = MappingProxyType(
    {
        "accelerator": "switchyard_accelerators",
        "strategy": "switchyard_strategies",
        "precision": "switchyard_precisions",
        "environment": "switchyard_environments",
        "logger": "switchyard_loggers",
    }
)


@dataclass(frozen=True)
class CheckpointFormatEntry:
    """A checkpoint directory format a plugin's strategy writes, which
    :func:`switchyard.checkpoint.load` and ``switchyard consolidate`` then read in one process
    with no strategy. Returned by ``switchyard_checkpoint_formats``; not selectable, so it is no
    :class:`Entry` kind.

    name: the format, for messages (``"deepspeed"``).
    marker: the name of a file inside such a directory that only this format writes
        (``"switchyard-deepspeed.json"``); a directory holding it, and none of core's own
        metadata, is read by this format.
    load_full: ``"module:attr"`` of a function ``(directory, weights_only=True) -> dict``
        returning every entry of the checkpoint as :func:`switchyard.checkpoint.load` does
        (modules as full CPU state dicts); imported only when such a directory is read.
    requires: modules the function needs (``"deepspeed"``), checked before it is imported.
    """

    name: str
    marker: str
    load_full: str
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise EntryError(
                f"CheckpointFormatEntry name {self.name!r} must be lower-case letters, digits, "
                "'_', '.' or '-'"
            )
        if not isinstance(self.marker, str) or not self.marker or "/" in self.marker:
            raise EntryError(
                f"CheckpointFormatEntry {self.name!r}: marker must be a file name (no '/'), "
                f"got {self.marker!r}"
            )
        module, _, attr = str(self.load_full).partition(":")
        if not isinstance(self.load_full, str) or not module or not attr:
            raise EntryError(
                f"CheckpointFormatEntry {self.name!r}: load_full must be a 'module:attr' "
                f"string, got {self.load_full!r}"
            )
        object.__setattr__(self, "requires", _as_tuple(self.requires))

    def missing_requirements(self) -> tuple[str, ...]:
        """The modules from ``requires`` that cannot be found, without importing any of them."""
        return _missing(self.requires)

    def load(self) -> Any:
        """Import and return the ``load_full`` function."""
        return _import(self.load_full)
