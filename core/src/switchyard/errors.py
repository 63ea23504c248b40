"""Exceptions switchyard raises. Every message says what was asked, what exists, and what to do."""

from __future__ import annotations


class SwitchyardError(Exception):
    """Base class of switchyard's own errors."""


class SelectionError(SwitchyardError, ValueError):
    """A ``Runtime`` argument names something unknown, unusable here, or incompatible."""


class DeviceSelectionError(SelectionError):
    """The ``devices`` argument is malformed or asks for devices that do not exist."""


class PluginConflictError(SelectionError):
    """Two plugins register the same name and the user has not said which one to use."""


class CheckpointError(SwitchyardError):
    """A checkpoint could not be written or read."""
