"""Turning ``Runtime`` arguments into one validated plan, before any process starts.

Each argument is a name, ``"auto"`` or an instance. Names are looked up in the registry; unknown
names get the closest known names as suggestions and, when a first-party plugin would provide
them, the command that installs it (or, when that plugin is installed but blocked, that it is
blocked). Incompatible combinations fail here, saying what is supported.

Among accelerators nothing is ordered here: ``"auto"`` takes the available entry of highest
declared ``priority``, and an alias several accelerators share (``"gpu"``) the available one of
highest priority among those declaring it. The generic accelerator of a device a PyTorch
extension registered (:mod:`switchyard.builtin.torch_device`) steps aside for any plugin's
entry of that device type.

Plugin code is isolated here too. ``"auto"`` skips an entry whose factory cannot be imported,
whose constructor or ``is_available()``/``detect()`` raises, that builds the wrong type, or whose
name two plugins claim; each skip is recorded in the registry's failures (shown by
``switchyard plugins``), warned about once per process, and listed in the error when nothing is
left. An entry chosen by name that fails the same way raises
:class:`~switchyard.errors.PluginSelectionError`, naming the plugin and its distribution and
chained to the plugin's exception.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec

import torch

from switchyard import first_party
from switchyard.accelerator import (
    Accelerator,
    DevicesArg,
    SlowPrecisionWarning,
    check_devices_limit,
)
from switchyard.entries import EntryKind, EnvironmentEntry, StrategyEntry, normalize_name
from switchyard.environment import ClusterEnvironment
from switchyard.errors import (
    PluginConflictError,
    PluginSelectionError,
    SelectionError,
    SwitchyardError,
)
from switchyard.precision import Precision
from switchyard.registry import PluginRegistry, Registration, block_hint, yields_to_plugins
from switchyard.strategy import Strategy
from switchyard.validation import MAX_NUM_NODES, parse_int

P = ParamSpec("P")

ENV_PREFIX = "SWITCHYARD_"
"""``switchyard run`` passes its choices to the script's ``Runtime()`` as ``SWITCHYARD_ACCELERATOR``,
``SWITCHYARD_STRATEGY``, ``SWITCHYARD_DEVICES``, ``SWITCHYARD_NUM_NODES``, ``SWITCHYARD_PRECISION``."""

DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "strategy": "auto",
    "devices": "auto",
    "num_nodes": 1,
    "precision": "32-true",
    "environment": "auto",
}


@dataclass(frozen=True)
class Plan:
    """What a runtime will run with: the chosen instances and the names they were chosen by."""

    accelerator: Accelerator
    strategy: Strategy
    precision: Precision
    environment: ClusterEnvironment
    device_indices: tuple[int, ...]
    num_nodes: int
    names: dict[str, str]

    @property
    def devices(self) -> list[torch.device]:
        return [type(self.accelerator).get_device(i) for i in self.device_indices]

    @property
    def world_size(self) -> int:
        return len(self.device_indices) * self.num_nodes


def argument(name: str, value: Any) -> Any:
    """The user's value, else the ``switchyard run`` choice from the environment, else the default."""
    if value is not None:
        return value
    env = os.environ.get(f"{ENV_PREFIX}{name.upper()}")
    if env:
        return env
    return DEFAULTS[name]


_VARIABLE_NAMES = ("accelerator", "strategy", "devices", "num_nodes", "precision", "environment")


def name_origins(error: BaseException, origins: Mapping[str, tuple[object, str]]) -> None:
    """Add to ``error``'s message where the values it is about came from: ``origins`` maps an
    argument name to ``(value, where)``, ``where`` being a variable (``SWITCHYARD_DEVICES``) or a
    command-line flag (``--devices``). Only the arguments the message mentions are named; the
    exception keeps its type and traceback."""
    message = str(error)
    notes = []
    for name, (value, where) in origins.items():
        if name not in message and repr(value)[:40] not in message:
            continue
        if f"{name}={value!r} came from" in message or f"{name}={value!r} was read" in message:
            continue
        if where.startswith("-"):
            notes.append(f"{name}={value!r} came from the flag {where}")
        else:
            notes.append(
                f"{name}={value!r} was read from the variable {where}, which `switchyard run` "
                "sets from its flags (or it was set by hand): fix or unset it"
            )
    if notes:
        error.args = (f"{message} ({'; '.join(notes)})", *error.args[1:])


def _names_variables(select: Callable[P, Plan]) -> Callable[P, Plan]:
    """Make a selection error about a value read from a ``SWITCHYARD_*`` variable say so."""

    @functools.wraps(select)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Plan:
        try:
            return select(*args, **kwargs)
        except SwitchyardError as error:
            origins = {}
            for name in _VARIABLE_NAMES:
                variable = f"{ENV_PREFIX}{name.upper()}"
                if kwargs.get(name) is None and os.environ.get(variable):
                    origins[name] = (os.environ[variable], variable)
            name_origins(error, origins)
            raise

    return wrapper


@_names_variables
def select(
    registry: PluginRegistry,
    *,
    accelerator: str | Accelerator | None = None,
    strategy: str | Strategy | None = None,
    devices: DevicesArg | None = None,
    num_nodes: int | str | None = None,
    precision: str | int | Precision | None = None,
    environment: str | ClusterEnvironment | None = None,
) -> Plan:
    """Resolve the arguments into a :class:`Plan`, or raise :class:`~switchyard.SelectionError`."""
    accelerator = argument("accelerator", accelerator)
    strategy = argument("strategy", strategy)
    devices = argument("devices", devices)
    precision = argument("precision", precision)
    environment = argument("environment", environment)
    nodes = _parse_num_nodes(argument("num_nodes", num_nodes))

    env, environment_name = _select_environment(registry, environment)
    if env.creates_processes_externally:
        # under torchrun, srun or mpirun the launcher already decided how many processes run
        # per node; "auto" follows it instead of contradicting it
        local_size = env.local_world_size()
        if devices == "auto" and local_size is not None:
            devices = local_size
        if num_nodes is None and not os.environ.get(f"{ENV_PREFIX}NUM_NODES") and local_size:
            nodes = max(env.world_size() // local_size, 1)
    accel, accel_name, accel_origin = _select_accelerator(registry, accelerator)
    check_devices_limit(devices)  # before any plugin builds a list from it
    with _plugin_code(accel_origin, f"parse_devices(devices={devices!r})"):
        indices = tuple(type(accel).parse_devices(devices))
    with _plugin_code(accel_origin, "process_group_backend()"):
        type(accel).process_group_backend()  # asked again by the strategy checks below
    world_size = len(indices) * nodes

    precision_reg: Registration | None = None
    if isinstance(precision, Precision):
        prec, precision_name = precision, precision.name
    else:
        precision_name = normalize_precision(precision)
        precision_reg = _lookup(registry, "precision", precision_name)
        prec = _create(precision_reg)
        prec.name = precision_reg.entry.name
        precision_name = precision_reg.entry.name

    strat, strategy_name, strategy_origin = _select_strategy(
        registry,
        strategy,
        accel_name,
        type(accel),
        precision_name,
        world_size,
        nodes,
        len(indices),
    )
    with _plugin_code(accel_origin, f"supports_precision({precision_name!r})"):
        _check_precision(precision_reg, precision_name, prec, accel, accel_name)
        slow = type(accel).precision_warning(precision_name, prec.compute_dtype or prec.param_dtype)
    if slow:
        warnings.warn(
            f"precision {precision_name!r} on {accel_name!r}: {slow}",
            SlowPrecisionWarning,
            stacklevel=4,  # the user's Runtime(...) line
        )
    env.validate_settings(num_devices=len(indices), num_nodes=nodes)

    with _plugin_code(accel_origin, "get_device()"):
        bound_devices = [type(accel).get_device(i) for i in indices]
    with _plugin_code(strategy_origin, "bind()"):
        strat.bind(
            accelerator=accel,
            precision=prec,
            environment=env,
            devices=bound_devices,
            num_nodes=nodes,
        )
    return Plan(
        accelerator=accel,
        strategy=strat,
        # what the strategy runs with: connect_precision may have adapted or replaced it
        precision=strat.precision,
        environment=env,
        device_indices=indices,
        num_nodes=nodes,
        names={
            "accelerator": accel_name,
            "strategy": strategy_name,
            "precision": precision_name,
            "environment": environment_name,
        },
    )


def normalize_precision(value: str | int) -> str:
    """``16`` and ``"16"`` name ``16-mixed`` through its alias; strings are lower-cased."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SelectionError(
            f"precision={value!r} must be a name such as '32-true' or 'bf16-mixed', or a "
            "Precision instance"
        )
    return str(value).strip().lower()


def _parse_num_nodes(value: int | str) -> int:
    valid = f"must be a positive integer, at most {MAX_NUM_NODES}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        # int(1.5) is 1: a float is refused rather than silently truncated
        raise SelectionError(f"num_nodes={value!r} {valid}")
    try:
        nodes = value if isinstance(value, int) else parse_int(value, minimum=1, maximum=10**9)
    except ValueError:
        raise SelectionError(f"num_nodes={value!r} {valid}") from None
    if not 1 <= nodes <= MAX_NUM_NODES:
        raise SelectionError(f"num_nodes={value!r} {valid}")
    return nodes


def _lookup(registry: PluginRegistry, kind: EntryKind, name: str) -> Registration:
    registration = registry.get(kind, name)
    if registration is None:
        raise SelectionError(unknown_message(registry, kind, name))
    with _plugin_code(
        origin(registration), f"the check of its requires {registration.entry.requires}"
    ):
        missing = registration.entry.missing_requirements()
    if missing:
        plugin = first_party.plugin_for(kind, registration.entry.name)
        hint = (
            f"install it: {first_party.install_command(plugin)}"
            if plugin
            else "install the package that provides it (the plugin's documentation names it)"
        )
        raise SelectionError(
            f"{kind} {name!r} (from plugin {registration.plugin.describe()}) needs the module "
            f"{', '.join(missing)}, which cannot be imported here; {hint}"
        )
    return registration


_PLURAL = {
    "accelerator": "accelerators",
    "strategy": "strategies",
    "precision": "precisions",
    "environment": "environments",
}


def unknown_message(registry: PluginRegistry, kind: EntryKind, name: str) -> str:
    """The error text for a name nobody registered: suggestions, what is installed, the install
    command of a first-party plugin, and plugins that failed to load."""
    known = registry.names(kind)
    every_name = sorted({n for r in registry.registrations(kind) for n in r.entry.names})
    message = f"unknown {kind} {name!r}."
    close = difflib.get_close_matches(name, every_name, n=3, cutoff=0.6)
    if close:
        message += f" Did you mean {' or '.join(repr(c) for c in close)}?"
    message += f" Installed {_PLURAL[kind]}: {', '.join(known) or 'none'}."
    not_loaded = registry.not_loaded()
    plugin = first_party.plugin_for(kind, name)
    if plugin is not None:
        distribution = f"switchyard-{plugin}"
        held = [
            (info, why)
            for info, why in not_loaded
            if info.distribution is not None
            and normalize_name(info.distribution).replace("_", "-") == distribution
        ]
        if held:
            why = held[0][1]
            message += (
                f" {kind.capitalize()} {name!r} comes with the {distribution} plugin, which is "
                f"installed but was not loaded: {why}. Remove it from that setting to use it."
            )
        elif any(
            info.distribution is not None
            and normalize_name(info.distribution).replace("_", "-") == distribution
            for info in registry.plugins.values()
        ):
            message += (
                f" {kind.capitalize()} {name!r} would come with the {distribution} plugin, "
                "which is loaded but registers no such name (see the failures below)."
            )
        else:
            message += (
                f" {kind.capitalize()} {name!r} comes with the {distribution} plugin, which "
                f"is not installed: {first_party.install_command(plugin)}"
            )
    message += _not_loaded_note(registry)
    failed = [f for f in registry.failures if f.hides_entries]
    if failed:
        message += (
            " Some plugins failed to load and may have provided it: "
            + ", ".join(f"{f.plugin.describe()} ({f.error})" for f in failed)
            + "; run 'switchyard plugins' for details."
        )
    return message


_INTERFACES: dict[EntryKind, type] = {
    "accelerator": Accelerator,
    "strategy": Strategy,
    "precision": Precision,
    "environment": ClusterEnvironment,
}


def origin(registration: Registration) -> str:
    """``"strategy 'ghost' from plugin ghost (switchyard-ghost 1.0.0)"``, for messages."""
    return f"{registration.kind} {registration.name!r} from plugin {registration.plugin.describe()}"


def _instance_origin(kind: str, instance: object) -> str:
    cls = type(instance)
    return f"the {kind} instance of {cls.__module__}.{cls.__qualname__} passed to Runtime"


@contextlib.contextmanager
def _plugin_code(where: str, call: str) -> Iterator[None]:
    """Run a plugin's method: a switchyard error passes through; anything else is the plugin's
    bug, raised as a PluginSelectionError naming where it came from."""
    try:
        yield
    except SwitchyardError:
        raise
    except (Exception, SystemExit) as error:
        raise PluginSelectionError(
            f"{where} raised in {call}: {_error_text(error)}. This is a bug in that plugin "
            "(its methods answer with a switchyard error, not a raw exception): report it to "
            "its authors, update it, or choose another"
        ) from error


def _error_text(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"SystemExit: sys.exit({error.code!r}) was called"
    return f"{type(error).__name__}: {error}"


def _load_class(registration: Registration) -> Any:
    try:
        return registration.entry.load()
    except (Exception, SystemExit) as error:
        raise PluginSelectionError(
            f"{origin(registration)} could not be imported: its factory "
            f"{registration.entry.factory!r} raised {_error_text(error)}. Reinstall or update "
            f"that plugin, block it ({block_hint(registration.plugin)}), or choose another "
            f"{registration.kind}"
        ) from error


def _instantiate(registration: Registration, cls: Any, **kwargs: Any) -> Any:
    """``cls(**init_args, **kwargs)``, checked to be the kind's interface."""
    try:
        instance = cls(**{**registration.entry.init_args, **kwargs})
    except (Exception, SystemExit) as error:
        raise PluginSelectionError(
            f"{origin(registration)} could not be created: {registration.entry.factory!r} "
            f"raised {_error_text(error)}. Report it to the plugin's authors, update it, block "
            f"it ({block_hint(registration.plugin)}), or choose another {registration.kind}"
        ) from error
    expected = _INTERFACES[registration.kind]
    if not isinstance(instance, expected):
        raise PluginSelectionError(
            f"{origin(registration)} is broken: its factory {registration.entry.factory!r} "
            f"returned {type(instance).__module__}.{type(instance).__qualname__}, which is not "
            f"a switchyard {expected.__name__}. Report it to the plugin's authors, block it "
            f"({block_hint(registration.plugin)}), or choose another {registration.kind}"
        )
    return instance


def _create(registration: Registration, **kwargs: Any) -> Any:
    """The entry's instance; a failure of the plugin's code is a PluginSelectionError naming
    the plugin and its distribution, chained to the plugin's exception."""
    return _instantiate(registration, _load_class(registration), **kwargs)


def _skip(
    registry: PluginRegistry, registration: Registration, stage: str, error: BaseException | str
) -> None:
    """``"auto"`` passes over an entry: record it (once) and warn (once)."""
    failure = registry.record_entry_failure(registration, stage, error)
    if failure is not None:
        warnings.warn(
            f"{registration.kind}='auto' skipped {origin(registration)}: {failure.error}; "
            "run 'switchyard plugins' for details",
            RuntimeWarning,
            stacklevel=4,
        )


def _skipped_note(registry: PluginRegistry, kind: EntryKind) -> str:
    """The entries ``"auto"`` skipped, and the plugins that were not loaded, for its errors."""
    prefix = f"{kind} "
    skipped = [f for f in registry.failures if f.entry and f.entry.startswith(prefix)]
    note = ""
    if skipped:
        note += " Skipped because of their plugin: " + "; ".join(
            f"{f.entry} from {f.plugin.describe()} at {f.stage}: {f.error}" for f in skipped
        )
        note += "."
    return note + _not_loaded_note(registry)


def _not_loaded_note(registry: PluginRegistry) -> str:
    """The installed plugins that were not loaded, grouped by why, for messages."""
    by_reason: dict[str, list[str]] = {}
    for info, why in registry.not_loaded():
        by_reason.setdefault(why, []).append(info.describe())
    if not by_reason:
        return ""
    return (
        " Installed plugins that were not loaded: "
        + "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())
        + "."
    )


def _unambiguous(registry: PluginRegistry, registration: Registration) -> bool:
    """Whether ``"auto"`` may pick this entry: no other plugin claims its name (or a plugin
    passed in code claims it and this is that one). A conflict is skipped and recorded, never
    settled by priority: a plugin must not take over a name silently."""
    try:
        chosen = registry.get(registration.kind, registration.name)
    except PluginConflictError as error:
        _skip(registry, registration, "name conflict", str(error))
        return False
    return chosen is registration


def _auto_create(registry: PluginRegistry, registration: Registration) -> Any | None:
    try:
        cls = registration.entry.load()
    except (Exception, SystemExit) as error:
        _skip(registry, registration, "factory", error)
        return None
    try:
        return _instantiate(registration, cls)
    except PluginSelectionError as error:
        _skip(registry, registration, "create", error.__cause__ or str(error))
        return None


def _missing(registry: PluginRegistry, registration: Registration) -> bool:
    """Whether the entry's ``requires`` are missing; a check that raises (a parent package that
    fails to import) is the plugin's failure, recorded."""
    try:
        return bool(registration.entry.missing_requirements())
    except (Exception, SystemExit) as error:
        _skip(registry, registration, "factory", error)
        return True


def _select_accelerator(
    registry: PluginRegistry, value: str | Accelerator
) -> tuple[Accelerator, str, str]:
    """The accelerator, its name, and where it came from (for messages)."""
    if isinstance(value, Accelerator):
        return value, type(value).device_type, _instance_origin("accelerator", value)
    if not isinstance(value, str):
        raise SelectionError(
            f"accelerator={value!r} must be a name such as 'cpu' or 'cuda', 'auto', or an "
            "Accelerator instance"
        )
    name = value.strip().lower()
    if name == "auto":
        return _auto_accelerator(registry)
    shared = registry.shared_alias("accelerator", name)
    if shared is not None:
        return _shared_alias_accelerator(registry, name, shared)
    registration = _lookup(registry, "accelerator", name)
    cls = _load_class(registration)
    _check_device_type(cls, registration)
    # a qualified name ("builtin:openreg") asks for that very entry
    claimed = [] if ":" in name else device_type_claimants(registry, registration)
    if claimed:
        raise SelectionError(
            f"accelerator {name!r} is switchyard's generic accelerator for the PyTorch device "
            f"{cls.device_type!r}, and a plugin describes that device: "
            + "; ".join(f"accelerator {r.entry.name!r} from {r.plugin.describe()}" for r in claimed)
            + f". The plugin's accelerator wins: pass accelerator={claimed[0].entry.name!r} "
            f"(or accelerator='{registration.plugin.name}:{registration.entry.name}' to use the "
            "generic one anyway)"
        )
    with _plugin_code(origin(registration), "unavailable_reason()"):
        reason = cls.unavailable_reason()
    if reason is not None:
        usable = [n for n, _ in _usable_accelerators(registry)]
        raise SelectionError(
            f"accelerator {name!r} is installed but cannot be used here: {reason}. "
            f"Usable here: {', '.join(usable) or 'none'}; pass accelerator='auto' to pick the best."
        )
    return _instantiate(registration, cls), registration.entry.name, origin(registration)


def _shared_alias_accelerator(
    registry: PluginRegistry, alias: str, declaring: list[Registration]
) -> tuple[Accelerator, str, str]:
    """The available accelerator of highest priority among those declaring ``alias``
    (``gpu``); when none is, an error saying why each one is not."""
    reasons = []
    for registration in declaring:
        where = f"{registration.entry.name!r} from {registration.plugin.describe()}"
        if not _unambiguous(registry, registration):
            reasons.append(f"{where}: its name is claimed by several plugins")
            continue
        with _plugin_code(
            origin(registration), f"the check of its requires {registration.entry.requires}"
        ):
            missing = registration.entry.missing_requirements()
        if missing:
            plugin = first_party.plugin_for("accelerator", registration.entry.name)
            install = f" ({first_party.install_command(plugin)})" if plugin else ""
            reasons.append(f"{where}: needs the module {', '.join(missing)}{install}")
            continue
        # as for "auto", one broken plugin must not hide the others: its failure is recorded
        # and becomes its reason
        stage = "factory"
        try:
            cls = registration.entry.load()
            _check_device_type(cls, registration)
            stage = "is_available"
            reason = cls.unavailable_reason()
            if reason is None and not device_type_claimants(registry, registration):
                stage = "create"
                instance = _instantiate(registration, cls)
                return instance, registration.entry.name, origin(registration)
        except (Exception, SystemExit) as error:
            cause = error.__cause__ if isinstance(error, PluginSelectionError) else None
            failure = cause or error
            _skip(registry, registration, stage, failure)
            reasons.append(f"{where}: its plugin failed at {stage}: {_error_text(failure)}")
            continue
        reasons.append(f"{where}: {reason or 'a plugin for its device type takes its place'}")
    usable = [n for n, _ in _usable_accelerators(registry)]
    raise SelectionError(
        f"accelerator {alias!r} names whichever of the accelerators declaring it is available "
        f"(highest priority first): {', '.join(r.entry.name for r in declaring)}; none is usable "
        f"here: {'; '.join(reasons)}. Usable here: {', '.join(usable) or 'none'}; pass "
        "accelerator='auto' to pick the best."
    )


def device_type_claimants(
    registry: PluginRegistry, registration: Registration
) -> list[Registration]:
    """For an entry that yields to plugins (the generic accelerator of a PyTorch device,
    :func:`~switchyard.registry.yields_to_plugins`): the other plugins' accelerator entries
    that describe its device, by having its device type as their name or by declaring it as
    their ``device_type``, highest priority first. Empty for any other entry. Whether they are
    available does not matter: a plugin that says its device is unusable is not overruled."""
    if not yields_to_plugins(registration):
        return []
    try:
        device_type = getattr(registration.entry.load(), "device_type", None)
    except (Exception, SystemExit):
        return []
    claimants = []
    for other in registry.registrations("accelerator"):
        if yields_to_plugins(other):
            continue
        if device_type in other.entry.names:
            claimants.append(other)
            continue
        try:
            if other.entry.missing_requirements():
                continue
            declared = getattr(other.entry.load(), "device_type", None)
        except (Exception, SystemExit):
            continue  # recorded when selection tries that entry itself
        if declared == device_type:
            claimants.append(other)
    return sorted(claimants, key=lambda r: -r.entry.priority)


def _check_device_type(cls: Any, registration: Registration) -> None:
    device_type = getattr(cls, "device_type", None)
    if not isinstance(device_type, str) or not device_type:
        raise PluginSelectionError(
            f"accelerator {registration.name!r} from plugin {registration.plugin.describe()} "
            f"declares no device_type (got {device_type!r}); its Accelerator class must set "
            "device_type to a torch.device type string such as 'cpu'"
        )


def _available_accelerators(
    registry: PluginRegistry,
) -> Iterator[tuple[Registration, type[Accelerator]]]:
    """Accelerators whose requirements are installed, whose class imports, declares a
    device type and answers ``is_available()`` with true, highest priority first. One whose
    plugin fails on the way is skipped and recorded: auto must still find the others."""
    ordered = sorted(registry.registrations("accelerator"), key=lambda r: -r.entry.priority)
    for registration in ordered:
        if _missing(registry, registration) or not _unambiguous(registry, registration):
            continue
        try:
            cls = registration.entry.load()
        except (Exception, SystemExit) as error:
            _skip(registry, registration, "factory", error)
            continue
        try:
            _check_device_type(cls, registration)
        except SelectionError as error:
            _skip(registry, registration, "factory", str(error))
            continue
        if device_type_claimants(registry, registration):
            continue  # a plugin for the device wins over the generic accelerator
        try:
            available = cls.is_available()
        except (Exception, SystemExit) as error:
            _skip(registry, registration, "is_available", error)
            continue
        if available:
            yield registration, cls


def _usable_accelerators(registry: PluginRegistry) -> list[tuple[str, Registration]]:
    return [(r.entry.name, r) for r, _ in _available_accelerators(registry)]


def _auto_accelerator(registry: PluginRegistry) -> tuple[Accelerator, str, str]:
    for registration, cls in _available_accelerators(registry):
        try:
            instance = _instantiate(registration, cls)
        except PluginSelectionError as error:
            _skip(registry, registration, "create", error.__cause__ or str(error))
            continue
        return instance, registration.entry.name, origin(registration)
    installed = registry.names("accelerator")
    cpu_held = any(
        info.distribution is not None
        and normalize_name(info.distribution).replace("_", "-") == "switchyard-cpu"
        for info, _ in registry.not_loaded()
    )
    hint = (
        "The CPU plugin is installed but was not loaded (see above)"
        if cpu_held
        else f"Install the CPU plugin: {first_party.install_command('cpu')}"
    )
    raise SelectionError(
        "accelerator='auto' found no usable accelerator. Installed: "
        f"{', '.join(installed) or 'none'}.{_skipped_note(registry, 'accelerator')} {hint}; run "
        "'switchyard plugins' to see why others are not usable."
    )


def strategy_supports(
    entry: StrategyEntry,
    accelerator: str,
    precision: str,
    accelerator_class: type[Accelerator] | None = None,
) -> str | None:
    """``None`` if the strategy entry can run with this accelerator and precision, otherwise a
    sentence saying why not: what the entry declares it supports, and what it needs of the
    accelerator class (a ``torch.distributed`` backend, sharding collectives)."""
    if entry.accelerators is not None and accelerator not in entry.accelerators:
        return (
            f"strategy {entry.name!r} supports accelerators {', '.join(entry.accelerators)}, "
            f"not {accelerator!r}"
        )
    if accelerator_class is not None:
        problem = accelerator_capability_problem(entry, accelerator, accelerator_class)
        if problem is not None:
            return problem
    if entry.precisions is not None and precision not in entry.precisions:
        return (
            f"strategy {entry.name!r} supports precisions {', '.join(entry.precisions)}, "
            f"not {precision!r}"
        )
    return None


def accelerator_capability_problem(
    entry: StrategyEntry, accelerator: str, accelerator_class: type[Accelerator]
) -> str | None:
    """Why the accelerator's declared capabilities cannot carry the strategy entry, or ``None``."""
    if entry.distributed and accelerator_class.process_group_backend() is None:
        return (
            f"strategy {entry.name!r} runs one process per device talking through "
            f"torch.distributed, but accelerator {accelerator!r} declares no process group "
            f"backend for {accelerator_class.device_type!r} tensors (its distributed_backend "
            "is None, or torch.distributed registers no backend that takes them), so it "
            "runs one process on one device"
        )
    if entry.sharded and not accelerator_class.supports_sharding:
        return (
            f"strategy {entry.name!r} shards parameters with all-gather and reduce-scatter, "
            f"which accelerator {accelerator!r} declares it does not support "
            "(supports_sharding=False)"
        )
    return None


def _select_strategy(
    registry: PluginRegistry,
    value: str | Strategy,
    accelerator: str,
    accelerator_class: type[Accelerator],
    precision: str,
    world_size: int,
    num_nodes: int,
    num_devices: int,
) -> tuple[Strategy, str, str]:
    """The strategy, its name, and where it came from (for messages)."""
    if isinstance(value, Strategy):
        # an instance checks what it needs of the accelerator in bind()
        name = getattr(value, "name", type(value).__name__)
        return value, name, _instance_origin("strategy", value)
    if not isinstance(value, str):
        raise SelectionError(
            f"strategy={value!r} must be a name such as 'ddp', 'auto', or a Strategy instance"
        )
    name = value.strip().lower()
    distributed = world_size > 1
    # every registered strategy entry (registrations of kind "strategy" hold StrategyEntry)
    pairs = [
        (r, r.entry)
        for r in registry.registrations("strategy")
        if isinstance(r.entry, StrategyEntry)
    ]
    entries: list[StrategyEntry] = [e for _, e in pairs]

    def fits(entry: StrategyEntry) -> bool:
        return strategy_supports(entry, accelerator, precision, accelerator_class) is None

    if name == "auto":
        candidates = [
            r
            for r, e in pairs
            if e.distributed == distributed and fits(e) and not _missing(registry, r)
        ]
        # highest priority first (the first registered among equals), skipping what fails
        for registration in sorted(candidates, key=lambda r: -r.entry.priority):
            if not _unambiguous(registry, registration):
                continue
            instance = _auto_create(registry, registration)
            if instance is not None:
                return instance, registration.entry.name, origin(registration)
        if not candidates:
            what = f"{num_devices} devices x {num_nodes} nodes" if distributed else "one device"
            if distributed and accelerator_class.process_group_backend() is None:
                hint = (
                    f" Accelerator {accelerator!r} declares no torch.distributed backend, so "
                    "it cannot run several processes: pass devices=1 (and num_nodes=1)."
                )
            elif distributed:
                hint = f" Install DDP: {first_party.install_command('ddp')}."
            else:
                hint = ""
            raise SelectionError(
                f"strategy='auto' found no installed strategy for accelerator {accelerator!r} "
                f"with precision {precision!r} on {what}. Installed strategies: "
                f"{', '.join(registry.names('strategy')) or 'none'}.{hint}"
                f"{_skipped_note(registry, 'strategy')}"
            )
        what = "several processes" if distributed else "one device"
        raise SelectionError(
            f"strategy='auto' found strategies for accelerator {accelerator!r} with precision "
            f"{precision!r} on {what}, but none of them could be used: "
            f"{', '.join(r.entry.name for r in candidates)}.{_skipped_note(registry, 'strategy')}"
            " Fix or block those plugins, or choose a strategy by name."
        )
    registration = _lookup(registry, "strategy", name)
    entry = registration.entry
    assert isinstance(entry, StrategyEntry)
    problem = strategy_supports(entry, accelerator, precision, accelerator_class)
    if problem is not None:
        alternatives = sorted(
            e.name for e in entries if fits(e) and e.distributed == entry.distributed
        )
        if not alternatives and entry.distributed:
            alternatives = sorted(e.name for e in entries if fits(e))
        raise SelectionError(
            f"{problem}. Strategies that can run on accelerator {accelerator!r} with precision "
            f"{precision!r}: {', '.join(alternatives) or 'none installed'}."
        )
    if distributed and not entry.distributed:
        fitting = sorted(e.name for e in entries if e.distributed and fits(e))
        use = (
            f"Use a distributed strategy ({', '.join(fitting)})"
            if fitting
            else f"No distributed strategy is installed: {first_party.install_command('ddp')}"
        )
        raise SelectionError(
            f"strategy {entry.name!r} runs one process on one device, but devices and num_nodes "
            f"ask for {world_size} processes ({num_devices} per node x {num_nodes} nodes). "
            f"{use}, or pass devices=1."
        )
    return _create(registration), entry.name, origin(registration)


def _check_precision(
    registration: Registration | None,
    name: str,
    precision: Precision,
    accelerator: Accelerator,
    accelerator_name: str,
) -> None:
    entry = registration.entry if registration is not None else None
    allowed = getattr(entry, "accelerators", None)
    if allowed is not None and accelerator_name not in allowed:
        raise SelectionError(
            f"precision {name!r} supports accelerators {', '.join(allowed)}, not "
            f"{accelerator_name!r}"
        )
    dtype = precision.compute_dtype or precision.param_dtype
    reason = type(accelerator).supports_precision(name, dtype)
    if reason is not None:
        raise SelectionError(
            f"precision {name!r} cannot run on accelerator {accelerator_name!r}: {reason}"
        )


def _select_environment(
    registry: PluginRegistry, value: str | ClusterEnvironment
) -> tuple[ClusterEnvironment, str]:
    if isinstance(value, ClusterEnvironment):
        return value, type(value).__name__
    if not isinstance(value, str):
        raise SelectionError(
            f"environment={value!r} must be a name such as 'slurm' or 'torchelastic', 'auto' "
            "(detect it), or a ClusterEnvironment instance"
        )
    name = value.strip().lower()
    if name != "auto":
        registration = _lookup(registry, "environment", name)
        return _create(registration), registration.entry.name
    ordered = sorted(registry.registrations("environment"), key=lambda r: -r.entry.priority)
    for registration in ordered:
        entry = registration.entry
        # an environment whose variables are all unset cannot be detected: do not import it
        if isinstance(entry, EnvironmentEntry) and not entry.may_detect(os.environ):
            continue
        if _missing(registry, registration) or not _unambiguous(registry, registration):
            continue
        try:
            cls = registration.entry.load()
        except (Exception, SystemExit) as error:
            _skip(registry, registration, "factory", error)
            continue
        try:
            detected = cls.detect()
        except (Exception, SystemExit) as error:
            # a broken environment plugin must not stop the local one from working
            _skip(registry, registration, "detect", error)
            continue
        if detected:
            try:
                return _instantiate(registration, cls), registration.entry.name
            except PluginSelectionError as error:
                _skip(registry, registration, "create", error.__cause__ or str(error))
    raise SelectionError(
        "no cluster environment detected, and the built-in 'local' is missing or was skipped."
        + _skipped_note(registry, "environment")
    )
