"""Loggers: where ``runtime.log`` and ``runtime.log_dict`` send metrics.

A logger is a :class:`Logger`. Users pass loggers to ``Runtime(loggers=...)`` as instances or by
the name of a :class:`~switchyard.LoggerEntry` that a plugin registered through the
``switchyard_loggers`` hook; switchyard's own ``csv`` and ``tensorboard`` loggers are registered
by its built-in plugin through that same hook. The interface follows Lightning Fabric's
``lightning.fabric.loggers.Logger`` (``name``, ``version``, ``root_dir``, ``log_dir``,
``log_metrics``, ``log_hyperparams``, ``save``, ``finalize``), so a Fabric logger ports by
changing its base class.

The built-in loggers are importable from here, as Fabric's are from
``lightning.fabric.loggers``: ``from switchyard.loggers import CSVLogger, TensorBoardLogger``
(the second needs the ``tensorboard`` package when it is constructed).

This module is imported only when a runtime is given loggers: ``import switchyard`` and a
``Runtime()`` without loggers never import it, nor any logger's implementation.
"""

from __future__ import annotations

import difflib
import os
import re
from abc import ABC, abstractmethod
from argparse import Namespace
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from switchyard.errors import ArgumentError, PluginSelectionError, SelectionError
from switchyard.registry import _short_repr, block_hint

if TYPE_CHECKING:
    from switchyard.builtin.csv_logger import CSVLogger
    from switchyard.builtin.tensorboard_logger import TensorBoardLogger
    from switchyard.registry import PluginRegistry, Registration

STATUSES = ("success", "failed")
"""What :meth:`Logger.finalize` is told about the run: it ended normally, or with an error."""


class Logger(ABC):
    """The base class of every logger.

    switchyard calls a logger's methods on global rank zero only, so a logger writes once per
    job without checking the rank itself (Fabric's loggers decorate their methods with
    ``rank_zero_only`` for this; here that is not needed). A logger is created in every process
    (before the processes know their rank), so its constructor must not create files, open
    connections or start a tracker's run: do that on first use, in :meth:`log_metrics` or
    :meth:`log_hyperparams`. With ``ddp_spawn`` the runtime and its loggers are pickled into
    the new processes before anything is logged.

    A subclass implements :attr:`name`, :attr:`version` and :meth:`log_metrics`; the rest is
    optional. Example, a Weights & Biases logger::

        class WandbLogger(Logger):
            def __init__(self, project: str = "switchyard", **init_kwargs):
                self._project, self._init_kwargs, self._run = project, init_kwargs, None

            @property
            def name(self): return self._project

            @property
            def version(self): return self._run.id if self._run else None

            def _experiment(self):
                if self._run is None:
                    import wandb  # the client library, imported on first use only
                    self._run = wandb.init(project=self._project, **self._init_kwargs)
                return self._run

            def log_metrics(self, metrics, step=None):
                self._experiment().log(dict(metrics), step=step)

            def log_hyperparams(self, params):
                self._experiment().config.update(dict(params))

            def finalize(self, status):
                if self._run is not None:
                    self._run.finish(exit_code=0 if status == "success" else 1)
    """

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment's name, e.g. ``"switchyard"``; ``None`` if the logger has none."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The run's version or id within the experiment, e.g. ``3`` for ``version_3``;
        ``None`` if not known yet (a tracker that assigns ids when the run starts)."""

    @property
    def root_dir(self) -> str | None:
        """The folder that holds every experiment of this logger, ``None`` if it writes no
        files (a tracker that sends metrics to a server)."""
        return None

    @property
    def log_dir(self) -> str | None:
        """The folder this run writes to, e.g. ``"logs/switchyard/version_3"``; ``None`` if it
        writes no files."""
        return None

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record ``metrics`` (metric name to a Python number) at ``step``.

        The runtime has already converted tensors to Python numbers. ``step`` is the caller's
        own step (the optimizer step, the batch index); ``None`` means the logger counts itself:
        the built-in loggers use the number of ``log_metrics`` calls before this one, so that
        repeated ``runtime.log("loss", x)`` calls land at steps 0, 1, 2...
        """

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Record the run's hyperparameters (learning rate, batch size...). Called with a plain
        mapping (``runtime.log_hyperparams`` converts an ``argparse.Namespace``); may be called
        more than once, later values update earlier ones. The default records nothing."""

    def save(self) -> None:
        """Make what was logged so far durable (flush buffers). The default does nothing."""

    def finalize(self, status: str) -> None:
        """The run ended: ``status`` is ``"success"`` or ``"failed"``. Called once, by the
        runtime's teardown (the end of the function given to ``launch``, or the end of the
        script). Close files and finish the tracker's run here; the default calls :meth:`save`.
        """
        self.save()


def as_numbers(metrics: object, what: str, *, convert: bool = True) -> dict[str, Any]:
    """``metrics`` checked: string names, each value a number or a one-element tensor; with
    ``convert``, tensors become Python numbers (``tensor.item()``, which waits for the device).
    A nested mapping is flattened with ``/`` (``{"val": {"acc": a}}`` is ``{"val/acc": a}``,
    which TensorBoard shows as the group ``val``).

    The runtime checks on every process and converts on global rank zero only, so that a bad
    metric fails in every process alike and the other processes never wait for a device. A
    tensor of more than one element, a string or ``None`` is an
    :class:`~switchyard.errors.ArgumentError` naming the metric.
    """
    if not isinstance(metrics, Mapping):
        raise ArgumentError(
            f"{what}(metrics={_short_repr(metrics, 60)}) takes a mapping of metric names to numbers, not "
            f"{type(metrics).__name__}; e.g. {{'loss': loss, 'accuracy': accuracy}}"
        )
    checked: dict[str, Any] = {}
    _check_into(checked, metrics, "", what, convert)
    return checked


def _check_into(
    checked: dict[str, Any], metrics: Mapping[Any, Any], prefix: str, what: str, convert: bool
) -> None:
    import numbers

    import torch

    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise ArgumentError(
                f"{what}: metric names must be non-empty strings, got {key!r} "
                f"({type(key).__name__})"
            )
        name = prefix + key
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ArgumentError(
                    f"{what}: metric {name!r} is a tensor of shape {tuple(value.shape)}, but a "
                    "metric is one number; log a reduction (value.mean(), value.sum()) or each "
                    "element under its own name"
                )
            value = value.detach().item() if convert else value
        elif isinstance(value, numbers.Real):
            # a NumPy scalar as the Python number it holds, for every logger's sake
            item = getattr(value, "item", None)
            value = item() if convert and callable(item) else value
        elif isinstance(value, Mapping):
            _check_into(checked, value, f"{name}/", what, convert)
            continue
        elif _one_number_array(value):
            value = value.item()
        else:
            raise ArgumentError(
                f"{what}: metric {name!r} is {_short_repr(value, 60)} ({type(value).__name__}), which "
                "is not a number; log ints, floats or one-element tensors (text belongs in "
                "log_hyperparams)"
            )
        if name in checked:
            raise ArgumentError(
                f"{what}: metric {name!r} is given twice (once nested, once as a flat name)"
            )
        checked[name] = value


def _one_number_array(value: Any) -> bool:
    """Whether ``value`` is an array of one real number (a NumPy array, ``tensor.numpy()``)."""
    import numbers

    item = getattr(value, "item", None)
    if getattr(value, "size", None) != 1 or not callable(item):
        return False
    try:
        return isinstance(item(), numbers.Real)
    except Exception:
        return False


class RunDirectory:
    """The folder of one run of a logger that writes files: ``<root_dir>/<name>/version_<n>``.

    Nothing is created until :meth:`claim`, which a logger calls on first use (on global rank
    zero, where the runtime calls it); before that :attr:`version` and :attr:`path` say which
    folder it would claim. Without a given ``version``, the claimed one is one more than the
    highest already there, taken with an exclusive ``mkdir`` so two runs started together never
    share a folder.

    Args:
        root_dir: the folder holding every experiment.
        name: the experiment, a folder of ``root_dir``.
        version: a given version, or ``None`` for the next free one.
        owner: the logger's class name, for messages.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        name: str,
        version: int | None = None,
        owner: str = "logger",
    ) -> None:
        if not isinstance(root_dir, (str, os.PathLike)):
            raise ArgumentError(
                f"{owner} root_dir={_short_repr(root_dir, 60)} must be a path (str or os.PathLike)"
            )
        if (
            not isinstance(name, str)
            or not name.strip()
            or "/" in name
            or os.sep in name
            or name in (".", "..")
        ):
            raise ArgumentError(
                f"{owner} name={name!r} must be a folder name: a non-empty string without '/'"
            )
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 0
        ):
            raise ArgumentError(
                f"{owner} version={version!r} must be a whole number from 0, or None to take "
                "the next free one"
            )
        self.root = Path(root_dir)
        self.name = name
        self._version = version
        self._claimed: Path | None = None
        self._owner = owner

    @property
    def version(self) -> int:
        """The claimed version, else the given one, else the next free one."""
        if self._version is not None:
            return self._version
        parent = self.root / self.name
        if not parent.is_dir():
            return 0
        taken = [int(m.group(1)) for p in parent.iterdir() if (m := _VERSION.match(p.name))]
        return max(taken, default=-1) + 1

    @property
    def path(self) -> Path:
        """The claimed folder, else the one :meth:`claim` would take now."""
        if self._claimed is not None:
            return self._claimed
        return self.root / self.name / f"version_{self.version}"

    @property
    def claimed(self) -> bool:
        return self._claimed is not None

    def claim(self, refuse_if_holds: str | None = None) -> Path:
        """Create the folder (once) and return it. With a given version whose folder already
        holds the file ``refuse_if_holds``, refuse (an :class:`~switchyard.errors.ArgumentError`)
        rather than mix two runs in one file."""
        if self._claimed is not None:
            return self._claimed
        parent = self.root / self.name
        parent.mkdir(parents=True, exist_ok=True)
        if self._version is not None:
            folder = parent / f"version_{self._version}"
            if refuse_if_holds is not None and (folder / refuse_if_holds).exists():
                raise ArgumentError(
                    f"{self._owner}(version={self._version}): {folder / refuse_if_holds} already "
                    "holds another run's data; choose another version, or leave version=None "
                    "to take the next free one"
                )
            folder.mkdir(exist_ok=True)
            self._claimed = folder
            return folder
        version = self.version
        while True:
            folder = parent / f"version_{version}"
            try:
                folder.mkdir()
            except FileExistsError:
                version += 1  # another run claimed it between the listing and the mkdir
                continue
            self._claimed, self._version = folder, version
            return folder


_VERSION = re.compile(r"^version_(\d+)$")


def hyperparameters(params: object, what: str = "runtime.log_hyperparams") -> dict[str, Any]:
    """``params`` as a plain dict: a mapping as it is, an ``argparse.Namespace`` through
    ``vars()``; anything else is an :class:`~switchyard.errors.ArgumentError`."""
    if isinstance(params, Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        bad = [k for k in params if not isinstance(k, str)]
        if bad:
            raise ArgumentError(
                f"{what}: hyperparameter names must be strings, got {bad[0]!r} "
                f"({type(bad[0]).__name__})"
            )
        return dict(params)
    raise ArgumentError(
        f"{what}(params={_short_repr(params, 60)}) takes a mapping of names to values or an "
        f"argparse.Namespace, not {type(params).__name__}"
    )


# -- Runtime(loggers=...) -------------------------------------------------------------------


def create_loggers(registry: PluginRegistry, loggers: object) -> list[Logger]:
    """``Runtime(loggers=...)`` as a list of :class:`Logger`: a name (``"csv"``, or
    ``"plugin:name"`` to pick one of two plugins registering a name), a :class:`Logger`
    instance, or a list of either. Named loggers are created with their entry's ``init_args``.

    Raises :class:`~switchyard.errors.SelectionError` for an unknown name (with the close
    matches and the installed loggers) or one whose requirements are missing (with the install
    command), :class:`~switchyard.errors.PluginSelectionError` when the plugin's factory fails,
    and :class:`~switchyard.errors.ArgumentError` for anything that is neither a name nor a
    Logger.
    """
    if loggers is None:
        return []
    items: list[object]
    if isinstance(loggers, (str, Logger)):
        items = [loggers]
    elif isinstance(loggers, Iterable) and not isinstance(loggers, (bytes, Mapping)):
        items = list(loggers)
    else:
        raise ArgumentError(
            f"loggers={_short_repr(loggers, 60)} ({type(loggers).__name__}) must be a logger name such as "
            f"'csv', a switchyard.Logger instance, or a list of them; installed loggers: "
            f"{_installed(registry)}"
        )
    single = isinstance(loggers, (str, Logger))
    created = []
    for index, item in enumerate(items):
        where = "loggers" if single else f"loggers[{index}]"
        if isinstance(item, Logger):
            created.append(item)
        elif isinstance(item, str):
            created.append(_create_named(registry, item))
        else:
            raise ArgumentError(_not_a_logger(where, item, registry))
    return created


def _not_a_logger(where: str, item: object, registry: PluginRegistry) -> str:
    if isinstance(item, type) and issubclass(item, Logger):
        return (
            f"{where}={item.__qualname__} is a Logger class; pass an instance, "
            f"{item.__qualname__}(...), or a logger name; installed loggers: "
            f"{_installed(registry)}"
        )
    looks_like = callable(getattr(item, "log_metrics", None))
    return (
        f"{where}={_short_repr(item, 60)} ({type(item).__module__}.{type(item).__qualname__}) is not a "
        "switchyard.Logger"
        + (
            " although it has log_metrics (a Lightning Fabric logger?): make its class derive "
            "from switchyard.Logger, whose methods are Fabric's"
            if looks_like
            else ""
        )
        + f". Pass a logger name, a switchyard.Logger instance, or a list of them; installed "
        f"loggers: {_installed(registry)}"
    )


def _installed(registry: PluginRegistry) -> str:
    return ", ".join(registry.names("logger")) or "none"


def _create_named(registry: PluginRegistry, name: str) -> Logger:
    registration = registry.get("logger", name)
    if registration is None:
        raise SelectionError(_unknown(registry, name))
    origin = describe(registration)
    missing = registration.entry.missing_requirements()
    if missing:
        hint = (
            f"install it: pip install {' '.join(missing)}"
            if registration.plugin.source == "builtin"
            else "install the package that provides it (the plugin's documentation names it)"
        )
        raise SelectionError(
            f"{origin} needs the module {', '.join(missing)}, which cannot be imported here; "
            f"{hint}; or choose another of the installed loggers: {_installed(registry)}"
        )
    try:
        instance = registration.entry.create()
    except (Exception, SystemExit) as error:
        registry.record_entry_failure(registration, "create", error)
        raise PluginSelectionError(
            f"{origin} could not be created: {registration.entry.factory!r} raised "
            f"{_error_text(error)}. Report it to the plugin's authors, update it, block it "
            f"({block_hint(registration.plugin)}), or choose another logger"
        ) from error
    if not isinstance(instance, Logger):
        raise PluginSelectionError(
            f"{origin} is broken: its factory {registration.entry.factory!r} returned "
            f"{type(instance).__module__}.{type(instance).__qualname__}, which is not a "
            f"switchyard Logger. Report it to the plugin's authors, block it "
            f"({block_hint(registration.plugin)}), or choose another logger"
        )
    return instance


def _unknown(registry: PluginRegistry, name: str) -> str:
    every_name = sorted({n for r in registry.registrations("logger") for n in r.entry.names})
    message = f"unknown logger {name!r}."
    close = difflib.get_close_matches(name.strip().lower(), every_name, n=3, cutoff=0.6)
    if close:
        message += f" Did you mean {' or '.join(repr(c) for c in close)}?"
    message += (
        f" Installed loggers: {_installed(registry)}. A third-party logger (W&B, MLflow...) "
        "comes with its plugin's distribution; a switchyard.Logger instance can be passed as is."
    )
    failed = [f for f in registry.failures if f.hides_entries]
    if failed:
        message += (
            " Some plugins failed to load and may have provided it: "
            + ", ".join(f"{f.plugin.describe()} ({f.error})" for f in failed)
            + "; run 'switchyard plugins' for details."
        )
    return message


def describe(registration: Registration) -> str:
    """``"logger 'csv' from plugin builtin (switchyard 0.1.0)"``, for messages."""
    return f"logger {registration.name!r} from plugin {registration.plugin.describe()}"


def _error_text(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"SystemExit: sys.exit({error.code!r}) was called"
    return f"{type(error).__name__}: {error}"


_BUILT_IN = {
    "CSVLogger": "switchyard.builtin.csv_logger",
    "TensorBoardLogger": "switchyard.builtin.tensorboard_logger",
}


def __getattr__(name: str) -> Any:
    # the implementations live with the built-in plugin that registers them, and import this
    # module themselves: they are loaded on first use
    if name in _BUILT_IN:
        import importlib

        return getattr(importlib.import_module(_BUILT_IN[name]), name)
    raise AttributeError(f"module 'switchyard.loggers' has no attribute {name!r}")


__all__ = [
    "STATUSES",
    "CSVLogger",
    "Logger",
    "TensorBoardLogger",
    "as_numbers",
    "create_loggers",
    "RunDirectory",
    "hyperparameters",
]
