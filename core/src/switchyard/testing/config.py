"""What the kit checks: the entries named on the command line, resolved once per session.

Nothing here imports pytest; :mod:`switchyard.testing.plugin` turns :class:`KitUsageError` into
a usage error and hands the :class:`KitConfig` to the checks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from switchyard.entries import EntryKind, StrategyEntry, normalize_name
from switchyard.errors import PluginConflictError
from switchyard.registry import PluginInfo, PluginRegistry, Registration, default_registry
from switchyard.selection import strategy_supports, unknown_message

KINDS: tuple[EntryKind, ...] = ("accelerator", "strategy", "precision", "environment")

FAMILIES = ("entries", "accelerator", "precision", "strategy")
"""The kit's check modules (``switchyard/testing/suite/<family>.py``), in the order they run."""

DEFAULT_TIMEOUT = 240.0
"""Seconds a strategy job may take before it is killed and its checks fail."""


class KitUsageError(ValueError):
    """The command line selects nothing, something unknown, or an impossible combination."""


def describe(registration: Registration) -> str:
    """``"strategy 'ddp' (plugin ddp (switchyard-ddp 0.1.0))"``, for messages."""
    return (
        f"{registration.kind} {registration.entry.name!r} (plugin {registration.plugin.describe()})"
    )


def entry_record(registration: Registration | None) -> dict[str, Any] | None:
    """A selected entry and the distribution it comes from, for the report."""
    if registration is None:
        return None
    factory = registration.entry.factory
    return {
        "kind": registration.kind,
        "name": registration.entry.name,
        "plugin": registration.plugin.name,
        "distribution": registration.plugin.distribution,
        "version": registration.plugin.version,
        "factory": factory
        if isinstance(factory, str)
        else f"{factory.__module__}:{factory.__qualname__}",
    }


@dataclass(frozen=True)
class PrecisionCase:
    """A precision the kit checks, and whether the hardware accelerator claims it.

    claimed: ``True`` if the accelerator accepts it (``supports_precision`` returns ``None``
    and the entry is not restricted to other accelerators), ``False`` if it declines (the
    reason says why), ``None`` if it could not be asked.
    error: ``reason`` is a failure (the precision or accelerator cannot be built), not an
    absence of hardware or of an optional requirement.
    """

    registration: Registration
    selector: str
    explicit: bool
    claimed: bool | None
    reason: str | None = None
    error: bool = False
    param_dtype: torch.dtype | None = None
    compute_dtype: torch.dtype | None = None

    @property
    def name(self) -> str:
        return self.registration.entry.name

    def record(self) -> dict[str, Any]:
        return {
            **(entry_record(self.registration) or {}),
            "requested": self.explicit,
            "claimed": self.claimed,
            "reason": self.reason,
            "param_dtype": str(self.param_dtype) if self.param_dtype else None,
            "compute_dtype": str(self.compute_dtype) if self.compute_dtype else None,
        }


class KitConfig:
    """The kit's selection for one pytest session.

    Args:
        accelerator: the accelerator whose checks run (``--switchyard-accelerator``).
        strategy: the strategy whose checks run on ``devices`` processes.
        devices: processes for the strategy checks; default 2 for a distributed strategy, else 1.
        precisions: precisions to check; default: every installed precision the accelerator
            claims, when an accelerator is selected.
        report: where to write the JSON report.
        timeout: seconds a strategy job may take.
        registry: the plugins to look in; default: the installed ones.

    Attributes:
        requested_precisions: the registrations of the precisions named by ``precisions``.
        report_path: where the JSON report goes, or ``None`` for no report.
        strategy_precision: the precision the strategy checks run in: ``32-true``, or the
            first the strategy's entry allows when it does not allow ``32-true``.
        hardware: the accelerator the strategy and precision checks run on: the selected one,
            else the highest-priority usable one the strategy supports, or ``None``.
        hardware_note: why ``hardware`` is ``None`` (no usable accelerator), else ``None``.
    """

    def __init__(
        self,
        *,
        accelerator: str | None = None,
        strategy: str | None = None,
        devices: str | int | None = None,
        precisions: Sequence[str] = (),
        report: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        registry: PluginRegistry | None = None,
    ) -> None:
        names = [n.strip() for value in precisions for n in value.split(",") if n.strip()]
        if not (accelerator or strategy or names):
            raise KitUsageError(
                "the switchyard conformance kit needs something to check: pass "
                "--switchyard-accelerator NAME, --switchyard-strategy NAME and/or "
                "--switchyard-precision NAME (see 'switchyard plugins' for the installed names)"
            )
        if timeout <= 0:
            raise KitUsageError(f"--switchyard-timeout={timeout} must be a positive number")
        self.registry = registry if registry is not None else default_registry()
        self.accelerator = self._lookup("accelerator", accelerator) if accelerator else None
        self.strategy = self._lookup("strategy", strategy) if strategy else None
        self.requested_precisions = [self._lookup("precision", n) for n in names]
        self.report_path = Path(report) if report else None
        self.timeout = float(timeout)
        self.devices = self._devices(devices)
        self.strategy_precision = self._strategy_precision()
        if self.accelerator is not None:
            self.hardware: Registration | None = self.accelerator
            self.hardware_note: str | None = None
        else:
            self.hardware, self.hardware_note = self._auto_hardware()
        self._check_combination()

    # -- resolving names ------------------------------------------------------------------

    def _lookup(self, kind: EntryKind, name: str) -> Registration:
        try:
            registration = self.registry.get(kind, name)
        except PluginConflictError as error:
            raise KitUsageError(str(error)) from None
        if registration is None:
            raise KitUsageError(unknown_message(self.registry, kind, normalize_name(name)))
        return registration

    def selector(self, registration: Registration) -> str:
        """The name to select ``registration`` by: plain, or ``plugin:name`` if two plugins
        claim the name."""
        if len(self.registry.candidates(registration.kind, registration.entry.name)) > 1:
            return f"{registration.plugin.name}:{registration.entry.name}"
        return registration.entry.name

    def _devices(self, devices: str | int | None) -> int:
        entry = self.strategy.entry if self.strategy is not None else None
        distributed = isinstance(entry, StrategyEntry) and entry.distributed is True
        if devices is None or str(devices).strip().lower() in ("", "auto"):
            return 2 if distributed else 1
        try:
            count = int(str(devices))
        except ValueError:
            count = 0
        if count < 1:
            raise KitUsageError(
                f"--switchyard-devices={devices!r} must be a positive number of processes"
            )
        if count > 1 and self.strategy is not None and not distributed:
            raise KitUsageError(
                f"{describe(self.strategy)} runs one process on one device (distributed=False), "
                f"but --switchyard-devices={count} asks for {count}; pass --switchyard-devices 1"
            )
        return count

    def _strategy_precision(self) -> str:
        entry = self.strategy.entry if self.strategy is not None else None
        allowed = getattr(entry, "precisions", None)
        if allowed and "32-true" not in allowed:
            return str(allowed[0])
        return "32-true"

    def _auto_hardware(self) -> tuple[Registration | None, str | None]:
        """The accelerator the strategy and precision checks run on when none was named: the
        highest-priority usable one the strategy supports."""
        allowed = getattr(self.strategy.entry, "accelerators", None) if self.strategy else None
        reasons = []
        ordered = sorted(
            self.registry.registrations("accelerator"), key=lambda r: -r.entry.priority
        )
        for registration in ordered:
            if allowed is not None and registration.entry.name not in allowed:
                continue
            missing = registration.entry.missing_requirements()
            if missing:
                reasons.append(f"{registration.entry.name}: needs {', '.join(missing)}")
                continue
            try:
                reason = registration.entry.load().unavailable_reason()
            except Exception as error:
                reasons.append(f"{registration.entry.name}: {type(error).__name__}: {error}")
                continue
            if reason is None:
                return registration, None
            reasons.append(f"{registration.entry.name}: {reason}")
        wanted = f" among those it supports ({', '.join(allowed)})" if allowed else ""
        return None, (
            f"no usable accelerator here{wanted}: {'; '.join(reasons) or 'none installed'}"
        )

    def _check_combination(self) -> None:
        if self.strategy is None or self.hardware is None:
            return
        entry = self.strategy.entry
        assert isinstance(entry, StrategyEntry)
        problem = strategy_supports(entry, self.hardware.entry.name, self.strategy_precision)
        if problem is not None:
            raise KitUsageError(
                f"{problem}: the strategy checks cannot run it with accelerator "
                f"{self.hardware.entry.name!r}; pass --switchyard-accelerator with one it supports"
            )

    # -- what is checked ------------------------------------------------------------------

    @property
    def selected(self) -> list[Registration]:
        """The entries named on the command line."""
        chosen = [self.accelerator, self.strategy, *self.requested_precisions]
        return [r for r in chosen if r is not None]

    def plugins_under_test(self) -> list[PluginInfo]:
        """The plugins providing the selected entries; the entry checks cover all of theirs."""
        plugins: dict[str, PluginInfo] = {}
        for registration in self.selected:
            plugins.setdefault(registration.plugin.name, registration.plugin)
        return list(plugins.values())

    def entries_under_test(self) -> list[Registration]:
        """Every entry registered by the plugins under test (those providing the selected
        accelerator, strategy and precisions), of every kind: the report lists them."""
        names = {p.name for p in self.plugins_under_test()}
        return [
            r for kind in KINDS for r in self.registry.registrations(kind) if r.plugin.name in names
        ]

    @functools.cached_property
    def considered_precisions(self) -> list[PrecisionCase]:
        """Every precision the kit asked the accelerator about."""
        if self.requested_precisions:
            return [self._precision_case(r, explicit=True) for r in self.requested_precisions]
        if self.accelerator is None:
            return []
        return [
            self._precision_case(r, explicit=False)
            for r in self.registry.registrations("precision")
        ]

    @property
    def precision_cases(self) -> list[PrecisionCase]:
        """The precisions whose checks run: those requested, or else those claimed."""
        return [c for c in self.considered_precisions if c.explicit or c.claimed]

    def _precision_case(self, registration: Registration, explicit: bool) -> PrecisionCase:
        def case(
            claimed: bool | None,
            reason: str | None,
            error: bool = False,
            precision: Any = None,
        ) -> PrecisionCase:
            return PrecisionCase(
                registration,
                self.selector(registration),
                explicit,
                claimed,
                reason,
                error,
                getattr(precision, "param_dtype", None),
                getattr(precision, "compute_dtype", None),
            )

        hardware = self.hardware
        if hardware is None:
            return case(None, self.hardware_note)
        missing = registration.entry.missing_requirements()
        if missing:
            return case(None, f"needs {', '.join(missing)}, which is not installed")
        try:
            precision = registration.entry.create()
        except Exception as error:
            return case(None, f"cannot be created: {type(error).__name__}: {error}", True)
        allowed = getattr(registration.entry, "accelerators", None)
        if allowed is not None and hardware.entry.name not in allowed:
            reason = f"it is restricted to accelerators {', '.join(allowed)}"
            return case(False, reason, precision=precision)
        dtype = getattr(precision, "compute_dtype", None) or getattr(precision, "param_dtype", None)
        try:
            accelerator = hardware.entry.load()
            reason = accelerator.supports_precision(registration.entry.name, dtype)
        except Exception as error:
            reason = f"{describe(hardware)} cannot answer: {type(error).__name__}: {error}"
            return case(None, reason, True, precision)
        if reason is not None:
            return case(False, f"{hardware.entry.name} declines it: {reason}", precision=precision)
        return case(True, None, precision=precision)

    @property
    def families(self) -> tuple[str, ...]:
        """The check modules this selection collects."""
        active = {"entries"}
        if self.accelerator is not None:
            active.add("accelerator")
        if self.precision_cases:
            active.add("precision")
        if self.strategy is not None:
            active.add("strategy")
        return tuple(f for f in FAMILIES if f in active)

    def device_record(self) -> dict[str, Any]:
        """The hardware accelerator's devices, for the report."""
        hardware = self.hardware
        if hardware is None:
            return {"accelerator": None, "available": False, "reason": self.hardware_note}
        record: dict[str, Any] = {"accelerator": hardware.entry.name}
        try:
            cls = hardware.entry.load()
            reason = cls.unavailable_reason()
            record.update(device_type=cls.device_type, available=reason is None, reason=reason)
            if reason is not None:
                return record
            record["count"] = cls.device_count()
            instance = hardware.entry.create()
            devices = {str(d): d for d in (cls.get_device(i) for i in cls.parse_devices(-1))}
            record["names"] = {
                key: instance.device_name(device) for key, device in list(devices.items())[:8]
            }
        except Exception as error:
            record.setdefault("available", False)
            record["error"] = f"{type(error).__name__}: {error}"
        return record
