"""switchyard: run PyTorch training code on any accelerator, with any strategy, through plugins.

This module only re-exports the public API; each name lives in the module named for it.
"""

# first: a broken installed distribution that makes 'import torch' fail is named there
from switchyard import _torch_import  # noqa: F401
from switchyard.accelerator import Accelerator, DevicesArg, SlowPrecisionWarning
from switchyard.entries import (
    AcceleratorEntry,
    CheckpointFormatEntry,
    Entry,
    EnvironmentEntry,
    PrecisionEntry,
    StrategyEntry,
)
from switchyard.environment import ClusterEnvironment
from switchyard.errors import (
    ArgumentError,
    CheckpointError,
    DeviceSelectionError,
    PluginConflictError,
    PluginError,
    PluginSelectionError,
    SelectionError,
    SwitchyardError,
)
from switchyard.hookspecs import hookimpl
from switchyard.launcher import Launcher
from switchyard.precision import Precision
from switchyard.registry import PluginHookError, PluginRegistry, default_registry
from switchyard.runtime import Runtime, SetupResult
from switchyard.seed import seed_everything
from switchyard.strategy import Strategy
from switchyard.wrappers import RuntimeDataLoader, RuntimeModule, RuntimeOptimizer

__all__ = [
    "Accelerator",
    "AcceleratorEntry",
    "CheckpointFormatEntry",
    "ArgumentError",
    "CheckpointError",
    "ClusterEnvironment",
    "DeviceSelectionError",
    "DevicesArg",
    "Entry",
    "EnvironmentEntry",
    "Launcher",
    "PluginConflictError",
    "PluginError",
    "PluginHookError",
    "PluginSelectionError",
    "PluginRegistry",
    "Precision",
    "PrecisionEntry",
    "Runtime",
    "RuntimeDataLoader",
    "RuntimeModule",
    "RuntimeOptimizer",
    "SelectionError",
    "SetupResult",
    "SlowPrecisionWarning",
    "Strategy",
    "StrategyEntry",
    "SwitchyardError",
    "default_registry",
    "hookimpl",
    "seed_everything",
]
