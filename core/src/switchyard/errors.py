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


class PluginError(SwitchyardError):
    """A plugin failed while switchyard used it: its entry's factory, or one of its hooks. The
    message names the plugin and its distribution; the plugin's own exception is the
    ``__cause__``."""


class PluginSelectionError(PluginError, SelectionError):
    """Selection failed because of a plugin (its factory cannot be imported, its constructor or
    one of its class methods raised, or it built the wrong type), not because of the choice."""


class ArgumentError(SwitchyardError, ValueError, TypeError):
    """A value passed to a switchyard function is of the wrong type or out of range: a
    collective's ``op``, ``src``, data or barrier name, ``save``'s path, state or filter,
    ``load``'s ``strict``/``weights_only``, the shape of ``plugins=``. The message names the
    argument, what was given and what is valid. Both a ``ValueError`` and a ``TypeError``, what
    Python itself raises for such mistakes, so handlers written for either keep working."""
