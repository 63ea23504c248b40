"""The contract between switchyard and its plugins.

A plugin is any module or object carrying functions marked with :data:`hookimpl`. It is found
through the ``switchyard`` entry-point group of an installed distribution, or passed explicitly
as ``Runtime(plugins=[...])``. switchyard's own pieces (the ``single_device`` strategy, the
torch.amp precisions, the cluster environments, the csv and tensorboard loggers) are plugins
written against these same hooks.

Registration hooks (``switchyard_accelerators``, ``switchyard_strategies``,
``switchyard_precisions``, ``switchyard_environments``, ``switchyard_loggers``) return or yield
small frozen records from :mod:`switchyard.entries`. They must be cheap: they run every time
plugins are discovered, so they must not import the engine they describe (torch_xla, deepspeed,
intel_extension_for_pytorch, wandb...).
The entry names its implementation lazily, as a ``"module:attr"`` string, imported only when a
user selects it. switchyard calls each registration hook of each plugin on its own, so one plugin
that raises is recorded and skipped without hiding the others.

Lifecycle hooks (``switchyard_runtime_started``, ``switchyard_post_setup``,
``switchyard_runtime_teardown``) let a plugin act on a running :class:`~switchyard.Runtime`
without owning it, for instance applying ``torch.compile`` or ``ipex.optimize`` after setup.

Example plugin module::

    from switchyard import AcceleratorEntry, hookimpl

    @hookimpl
    def switchyard_accelerators():
        yield AcceleratorEntry(
            name="npu",
            factory="switchyard_npu.accelerator:NPUAccelerator",
            description="Example NPU through torch_npu",
            requires=("torch_npu",),
            priority=60,
        )
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from switchyard.entries import (
        AcceleratorEntry,
        CheckpointFormatEntry,
        EnvironmentEntry,
        LoggerEntry,
        PrecisionEntry,
        StrategyEntry,
    )
    from switchyard.runtime import Runtime, SetupResult

PROJECT_NAME = "switchyard"
"""The pluggy project name, and the entry-point group plugins are published under."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks the hook specifications below (switchyard's own; plugins use :data:`hookimpl`)."""
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorator for a plugin's hook implementations: ``@switchyard.hookimpl``."""


# -- registration hooks -----------------------------------------------------------------------


@hookspec
def switchyard_accelerators() -> Iterable[AcceleratorEntry] | AcceleratorEntry | None:
    """Declare the accelerators this plugin provides.

    Called once per discovery, with no arguments. Return (or yield) one or more
    :class:`~switchyard.AcceleratorEntry`; return ``None`` to declare nothing (for instance when
    the plugin decides from environment variables that it does not apply).

    Must not import the hardware's runtime library: name the implementation lazily in
    ``factory="package.module:Class"`` and list what it needs in ``requires``.
    All plugins' results are collected (this is not a ``firstresult`` hook).
    """


@hookspec
def switchyard_strategies() -> Iterable[StrategyEntry] | StrategyEntry | None:
    """Declare the strategies this plugin provides.

    Called once per discovery, with no arguments. Return (or yield) one or more
    :class:`~switchyard.StrategyEntry`. Several entries may share one factory with different
    ``init_args`` (``ddp_spawn`` is ``ddp`` with ``start_method="spawn"``).
    All plugins' results are collected.
    """


@hookspec
def switchyard_precisions() -> Iterable[PrecisionEntry] | PrecisionEntry | None:
    """Declare the precisions this plugin provides.

    Called once per discovery, with no arguments. Return (or yield) one or more
    :class:`~switchyard.PrecisionEntry`. All plugins' results are collected.
    """


@hookspec
def switchyard_environments() -> Iterable[EnvironmentEntry] | EnvironmentEntry | None:
    """Declare the cluster environments this plugin can detect.

    Called once per discovery, with no arguments. Return (or yield) one or more
    :class:`~switchyard.EnvironmentEntry`. When the user does not choose an environment, the
    detected environment with the highest ``priority`` wins. All plugins' results are collected.
    """


@hookspec
def switchyard_loggers() -> Iterable[LoggerEntry] | LoggerEntry | None:
    """Declare the loggers this plugin provides (experiment trackers, metric files).

    Called once per discovery, with no arguments. Return (or yield) one or more
    :class:`~switchyard.LoggerEntry`; a user selects one by name, ``Runtime(loggers="wandb")``,
    and ``runtime.log``/``runtime.log_dict`` then reach its :class:`~switchyard.Logger`.

    Optional: a plugin that provides no logger does not implement it. Must not import the
    tracker's client library (``wandb``, ``mlflow``): name the implementation lazily in
    ``factory="package.module:Class"`` and list the library in ``requires``, so that a user
    without it gets an install hint instead of an ImportError. All plugins' results are
    collected; a plugin that raises here is recorded and skipped, the others' loggers stay.
    """


@hookspec
def switchyard_env_report() -> Mapping[str, Any] | None:
    """What ``switchyard env`` shows for this plugin, so that a bug report carries it.

    Called only by ``switchyard env``, with no arguments, once per plugin; return ``None`` or a
    mapping with any of:

    ``"versions"``
        library or engine name to its version, e.g. ``{"torch_xla": "2.9.0"}``;
    ``"variables"``
        names of the environment variables that steer your device or engine, or prefixes
        ending in ``_`` for a family of them, e.g. ``("PJRT_DEVICE", "XLA_")``: their values
        in this process are shown;

    and any other key, shown as it is. Must not create a device context nor import a heavy
    engine that the user's process would not import anyway; a plugin that raises here is
    reported and the others are shown.
    """


@hookspec
def switchyard_checkpoint_formats() -> (
    Iterable[CheckpointFormatEntry] | CheckpointFormatEntry | None
):
    """Declare the checkpoint directory formats this plugin's strategies write in their own
    format (not core's), so that :func:`switchyard.checkpoint.load` and ``switchyard
    consolidate`` read them in one process, with no strategy.

    Called when such a directory is read, with no arguments. Return (or yield) one or more
    :class:`~switchyard.entries.CheckpointFormatEntry`: the file that marks the format and the
    lazy ``"module:attr"`` of the function that reads it. Must not import the engine (name it in
    ``requires``). Each plugin's implementation is called on its own; one that raises is
    recorded in the registry's failures and the others are used.
    """


# -- lifecycle hooks --------------------------------------------------------------------------


@hookspec
def switchyard_runtime_started(runtime: Runtime) -> None:
    """Called in every process once ``runtime.launch()`` has set up the strategy's environment.

    ``runtime.global_rank``, ``runtime.world_size`` and ``runtime.device`` are valid here, and the
    process group (if any) exists. The return value is ignored. Each plugin's implementation is
    called on its own; one that raises stops ``launch()`` with a
    :class:`~switchyard.registry.PluginHookError` naming the plugin, and the runtime is torn down
    (every plugin's ``switchyard_runtime_teardown`` included).
    """


@hookspec
def switchyard_post_setup(runtime: Runtime, setup: SetupResult) -> None:
    """Called after ``runtime.setup(module, *optimizers)`` has prepared a module and optimizers.

    ``setup.module`` is the module after the strategy and precision have handled it (moved to the
    device, wrapped in DDP or sharded); ``setup.optimizers`` are the matching optimizers. A plugin
    may replace either in place, for example ``setup.module = torch.compile(setup.module)``; later
    plugins see the replacement. The user receives the result wrapped by the runtime.
    The return value is ignored. Each plugin's implementation is called on its own; one that
    raises stops ``runtime.setup()`` with a :class:`~switchyard.registry.PluginHookError` naming
    the plugin, the later plugins are not called, and no module is returned.
    """


@hookspec
def switchyard_runtime_teardown(runtime: Runtime) -> None:
    """Called in every process when the runtime tears down (end of ``launch``'d function, or
    interpreter exit). Release what ``switchyard_runtime_started`` acquired. The return value is
    ignored; an exception is reported as a warning and does not stop other plugins' teardown.
    """


REGISTRATION_HOOKS: tuple[str, ...] = (
    "switchyard_accelerators",
    "switchyard_strategies",
    "switchyard_precisions",
    "switchyard_environments",
    "switchyard_loggers",
)
"""The hooks whose results are entries, collected at discovery."""

REPORT_HOOKS: tuple[str, ...] = ("switchyard_env_report",)
"""Hooks switchyard calls one plugin at a time for what it shows (never wrappers)."""

FORMAT_HOOKS: tuple[str, ...] = ("switchyard_checkpoint_formats",)
"""Hooks switchyard calls one plugin at a time when it reads a checkpoint (never wrappers)."""
