"""Turning ``Runtime`` arguments into one validated plan, before any process starts.

Each argument is a name, ``"auto"`` or an instance. Names are looked up in the registry; unknown
names get the closest known names as suggestions and, when a first-party plugin would provide
them, the command that installs it. Incompatible combinations fail here, saying what is supported.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

import torch

from switchyard import first_party
from switchyard.accelerator import Accelerator, DevicesArg
from switchyard.entries import EntryKind, StrategyEntry
from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError
from switchyard.precision import Precision
from switchyard.registry import PluginRegistry, Registration
from switchyard.strategy import Strategy

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
    accel, accel_name = _select_accelerator(registry, accelerator)
    indices = tuple(type(accel).parse_devices(devices))
    world_size = len(indices) * nodes

    precision_reg: Registration | None = None
    if isinstance(precision, Precision):
        prec, precision_name = precision, precision.name
    else:
        precision_name = normalize_precision(precision)
        precision_reg = _lookup(registry, "precision", precision_name)
        prec = precision_reg.entry.create()
        prec.name = precision_reg.entry.name
        precision_name = precision_reg.entry.name

    strat, strategy_name = _select_strategy(
        registry,
        strategy,
        accel_name,
        type(accel),
        precision_name,
        world_size,
        nodes,
        len(indices),
    )
    _check_precision(precision_reg, precision_name, prec, accel, accel_name)
    env.validate_settings(num_devices=len(indices), num_nodes=nodes)

    strat.bind(
        accelerator=accel,
        precision=prec,
        environment=env,
        devices=[type(accel).get_device(i) for i in indices],
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
    try:
        nodes = int(value)
    except (TypeError, ValueError):
        raise SelectionError(f"num_nodes={value!r} must be a positive integer") from None
    if nodes < 1 or isinstance(value, bool) or not isinstance(value, (int, str)):
        # int(1.5) is 1: a float is refused rather than silently truncated
        raise SelectionError(f"num_nodes={value!r} must be a positive integer")
    return nodes


def _lookup(registry: PluginRegistry, kind: EntryKind, name: str) -> Registration:
    registration = registry.get(kind, name)
    if registration is None:
        raise SelectionError(unknown_message(registry, kind, name))
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
    plugin = first_party.plugin_for(kind, name)
    if plugin is not None:
        message += (
            f" {kind.capitalize()} {name!r} comes with the switchyard-{plugin} plugin, which is "
            f"not installed: {first_party.install_command(plugin)}"
        )
    failed = [f for f in registry.failures if f.stage != "register"]
    if failed:
        message += (
            " Some plugins failed to load and may have provided it: "
            + ", ".join(f"{f.plugin.describe()} ({f.error})" for f in failed)
            + "; run 'switchyard plugins' for details."
        )
    return message


def _load_class(registration: Registration) -> Any:
    try:
        return registration.entry.load()
    except Exception as error:
        raise SelectionError(
            f"{registration.kind} {registration.name!r} from plugin "
            f"{registration.plugin.describe()} could not be imported ({type(error).__name__}: "
            f"{error}); reinstall that plugin or choose another {registration.kind}"
        ) from error


def _select_accelerator(
    registry: PluginRegistry, value: str | Accelerator
) -> tuple[Accelerator, str]:
    if isinstance(value, Accelerator):
        return value, type(value).device_type
    if not isinstance(value, str):
        raise SelectionError(
            f"accelerator={value!r} must be a name such as 'cpu' or 'cuda', 'auto', or an "
            "Accelerator instance"
        )
    name = value.strip().lower()
    if name == "auto":
        return _auto_accelerator(registry)
    registration = _lookup(registry, "accelerator", name)
    cls = _load_class(registration)
    _check_device_type(cls, registration)
    reason = cls.unavailable_reason()
    if reason is not None:
        usable = [n for n, _ in _usable_accelerators(registry)]
        raise SelectionError(
            f"accelerator {name!r} is installed but cannot be used here: {reason}. "
            f"Usable here: {', '.join(usable) or 'none'}; pass accelerator='auto' to pick the best."
        )
    return registration.entry.create(), registration.entry.name


def _check_device_type(cls: Any, registration: Registration) -> None:
    device_type = getattr(cls, "device_type", None)
    if not isinstance(device_type, str) or not device_type:
        raise SelectionError(
            f"accelerator {registration.name!r} from plugin {registration.plugin.describe()} "
            f"declares no device_type (got {device_type!r}); its Accelerator class must set "
            "device_type to a torch.device type string such as 'cpu'"
        )


def _usable_accelerators(registry: PluginRegistry) -> list[tuple[str, Registration]]:
    usable = []
    ordered = sorted(registry.registrations("accelerator"), key=lambda r: -r.entry.priority)
    for registration in ordered:
        if registration.entry.missing_requirements():
            continue
        try:
            cls = registration.entry.load()
            available = cls.is_available()
        except Exception:
            continue  # reported by 'switchyard plugins'; auto must still find the others
        if available:
            usable.append((registration.entry.name, registration))
    return usable


def _auto_accelerator(registry: PluginRegistry) -> tuple[Accelerator, str]:
    usable = _usable_accelerators(registry)
    if not usable:
        installed = registry.names("accelerator")
        raise SelectionError(
            "accelerator='auto' found no usable accelerator. Installed: "
            f"{', '.join(installed) or 'none'}. Install the CPU plugin: "
            f"{first_party.install_command('cpu')}; run 'switchyard plugins' to see why others "
            "are not usable."
        )
    name, registration = usable[0]
    return registration.entry.create(), name


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
) -> tuple[Strategy, str]:
    if isinstance(value, Strategy):
        # an instance checks what it needs of the accelerator in bind()
        return value, getattr(value, "name", type(value).__name__)
    if not isinstance(value, str):
        raise SelectionError(
            f"strategy={value!r} must be a name such as 'ddp', 'auto', or a Strategy instance"
        )
    name = value.strip().lower()
    distributed = world_size > 1
    # every registered strategy entry (registrations of kind "strategy" hold StrategyEntry)
    entries: list[StrategyEntry] = [
        r.entry for r in registry.registrations("strategy") if isinstance(r.entry, StrategyEntry)
    ]

    def fits(entry: StrategyEntry) -> bool:
        return strategy_supports(entry, accelerator, precision, accelerator_class) is None

    if name == "auto":
        candidates = [
            e
            for e in entries
            if e.distributed == distributed and fits(e) and not e.missing_requirements()
        ]
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
            )
        best = max(candidates, key=lambda e: e.priority)
        return best.create(), best.name
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
    return registration.entry.create(), entry.name


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
    name = str(value).strip().lower()
    if name != "auto":
        registration = _lookup(registry, "environment", name)
        return registration.entry.create(), registration.entry.name
    ordered = sorted(registry.registrations("environment"), key=lambda r: -r.entry.priority)
    for registration in ordered:
        try:
            cls = registration.entry.load()
            detected = cls.detect()
        except Exception:
            continue  # a broken environment plugin must not stop the local one from working
        if detected:
            return registration.entry.create(), registration.entry.name
    raise SelectionError("no cluster environment detected, and the built-in 'local' is missing")
