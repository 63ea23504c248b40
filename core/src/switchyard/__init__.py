"""switchyard: run PyTorch training code on any accelerator, with any strategy, through plugins.

This module only re-exports the public API; each name lives in the module named for it.
"""

from typing import TYPE_CHECKING, Any

# first: a broken installed distribution that makes 'import torch' fail is named there
from switchyard import _torch_import  # noqa: F401
from switchyard.accelerator import Accelerator, DevicesArg, SlowPrecisionWarning
from switchyard.entries import (
    AcceleratorEntry,
    CheckpointFormatEntry,
    Entry,
    EnvironmentEntry,
    LoggerEntry,
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

if TYPE_CHECKING:
    from switchyard.evaluation import EvaluationBatchSampler
    from switchyard.loggers import Logger

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
    "EvaluationBatchSampler",
    "Launcher",
    "Logger",
    "LoggerEntry",
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


_LAZY = {"Logger": "switchyard.loggers", "EvaluationBatchSampler": "switchyard.evaluation"}


def __getattr__(name: str) -> Any:
    # imported on first use: a script that logs nothing, or evaluates nothing, never loads them
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'switchyard' has no attribute {name!r}")
