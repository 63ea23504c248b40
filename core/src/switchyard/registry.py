"""Finding plugins and the entries they register, over a :class:`pluggy.PluginManager`.

Sources, in order: switchyard's built-in plugin; installed distributions' entry points in the
``switchyard`` group (unless autoload is off); plugins passed explicitly. Environment switches:

``SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD=1``
    load no entry points except those named in ``SWITCHYARD_PLUGINS``.
``SWITCHYARD_PLUGINS=name,name``
    load only these entry points (by entry-point name or distribution name).
``SWITCHYARD_BLOCK_PLUGINS=name,name``
    never load these (by entry-point name or distribution name); also ``plugins=["no:name"]``.

A plugin that fails to import, fails to register, or whose registration hook raises or returns
something that is not an entry, is recorded in :attr:`PluginRegistry.failures` and skipped; the
other plugins are unaffected.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import re
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pluggy

from switchyard import hookspecs
from switchyard.entries import (
    ENTRY_TYPES,
    HOOK_FOR_KIND,
    Entry,
    EntryKind,
    normalize_name,
)
from switchyard.errors import PluginConflictError

ENV_DISABLE_AUTOLOAD = "SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOW = "SWITCHYARD_PLUGINS"
ENV_BLOCK = "SWITCHYARD_BLOCK_PLUGINS"

PluginSource = Literal["builtin", "entry-point", "explicit"]

_HOOK_NAMES = tuple(
    name for name in dir(hookspecs) if name.startswith(f"{hookspecs.PROJECT_NAME}_")
)
# hooks whose implementations switchyard calls itself, one plugin at a time, so that one failing
# plugin cannot hide the others: a pluggy wrapper around them would never run as one
_CALLED_ONE_BY_ONE = frozenset((*hookspecs.REGISTRATION_HOOKS, "switchyard_runtime_teardown"))
_HOOK_HINT = (
    ". The hooks a plugin may implement are documented in switchyard.hookspecs: "
    + ", ".join(_HOOK_NAMES)
)


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from.

    name: the plugin's registered name, e.g. ``"cpu"`` (the entry-point name).
    source: ``"builtin"``, ``"entry-point"`` or ``"explicit"`` (passed as ``plugins=[...]``).
    distribution, version: the installed distribution providing it, e.g. ``"switchyard-cpu"``.
    target: what was loaded, e.g. ``"switchyard_cpu.plugin"``.
    """

    name: str
    source: PluginSource
    distribution: str | None = None
    version: str | None = None
    target: str | None = None

    def describe(self) -> str:
        """``"cpu (switchyard-cpu 0.1.0)"``: the plugin and its distribution, for messages."""
        if self.distribution:
            return f"{self.name} ({self.distribution} {self.version or ''})".replace(" )", ")")
        return f"{self.name} ({self.source})"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin, or one of its hooks, that could not be used. ``stage`` is ``"import"``,
    ``"register"`` or the name of the hook that failed."""

    plugin: PluginInfo
    stage: str
    error: str
    traceback: str


@dataclass(frozen=True)
class Registration:
    """An entry together with the plugin that registered it."""

    entry: Entry
    plugin: PluginInfo

    @property
    def kind(self) -> EntryKind:
        return self.entry.kind

    @property
    def name(self) -> str:
        return self.entry.name


def _key(name: str) -> str:
    """The form plugin and distribution names are matched in, as pip compares distribution
    names (PEP 503): ``Acme_Accel``, ``acme.accel`` and ``acme-accel`` are one name."""
    return re.sub(r"[-_.]+", "-", normalize_name(name))


def _split_env(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _distribution_of(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


class PluginRegistry:
    """The plugins of one process (or one ``Runtime(plugins=...)``) and their entries.

    Parameters:
        plugins: plugin objects (modules or objects with ``@hookimpl`` functions) to register
            in addition to those discovered; strings ``"no:NAME"`` block a plugin by name.
        autoload: load entry points; default: unless ``SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD`` is set.
        allow: load only these entry-point plugins; default ``SWITCHYARD_PLUGINS``.
        block: never load these plugins; added to ``SWITCHYARD_BLOCK_PLUGINS``.
        entry_points: the entry points to consider, instead of the installed ones (for tests).
    """

    def __init__(
        self,
        plugins: Sequence[object] = (),
        *,
        autoload: bool | None = None,
        allow: Sequence[str] | None = None,
        block: Sequence[str] = (),
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    ) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.plugins: dict[str, PluginInfo] = {}
        self._registrations: dict[EntryKind, list[Registration]] | None = None

        explicit = [p for p in plugins if not isinstance(p, str)]
        blocked = {
            normalize_name(p[3:]) for p in plugins if isinstance(p, str) and p.startswith("no:")
        }
        strings = [p for p in plugins if isinstance(p, str) and not p.startswith("no:")]
        if strings:
            raise TypeError(
                f"plugins={strings!r}: a string in plugins must be 'no:NAME' to block a plugin; "
                "pass plugin modules or objects themselves to register them"
            )
        blocked |= {normalize_name(b) for b in (*block, *_split_env(ENV_BLOCK))}
        self.blocked = frozenset(blocked)
        if autoload is None:
            autoload = os.environ.get(ENV_DISABLE_AUTOLOAD, "").strip().lower() not in (
                "1",
                "true",
                "yes",
            )
        allowed = [
            normalize_name(a) for a in (allow if allow is not None else _split_env(ENV_ALLOW))
        ]
        self.autoload = autoload
        self.allowed = tuple(allowed)

        from switchyard import builtin

        self._register(
            builtin,
            PluginInfo("builtin", "builtin", "switchyard", _core_version(), builtin.__name__),
        )
        if autoload or allowed:
            self._load_entry_points(entry_points, allowed)
        for index, plugin in enumerate(explicit):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
            self._register(plugin, PluginInfo(str(name), "explicit", target=str(name)))

    # -- loading ----------------------------------------------------------------------------

    def _load_entry_points(
        self,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None,
        allowed: Sequence[str],
    ) -> None:
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME)
        seen: set[tuple[str, str]] = set()
        found: set[str] = set()
        blocked = {_key(b) for b in self.blocked}
        allowed_keys = {_key(a) for a in allowed}
        for ep in sorted(entry_points, key=lambda e: e.name):
            # one distribution visible twice on sys.path yields the same entry point twice
            if (ep.name, ep.value) in seen:
                continue
            seen.add((ep.name, ep.value))
            dist, version = _distribution_of(ep)
            info = PluginInfo(normalize_name(ep.name), "entry-point", dist, version, ep.value)
            keys = {_key(info.name), _key(dist or "")}
            found |= keys
            if keys & blocked:
                continue
            if allowed and not keys & allowed_keys:
                continue
            try:
                plugin = ep.load()
            except BaseException as error:
                if isinstance(error, KeyboardInterrupt):
                    raise
                self._fail(info, "import", error)
                continue
            self._register(plugin, info)
        for name in allowed:
            if _key(name) not in found:
                self.failures.append(
                    PluginFailure(
                        PluginInfo(name, "entry-point"),
                        "import",
                        f"{ENV_ALLOW} names {name!r}, but no installed distribution provides a "
                        f"'{hookspecs.PROJECT_NAME}' entry point of that name; installed: "
                        f"{sorted(found - {''}) or 'none'}",
                        "",
                    )
                )

    def _register(self, plugin: object, info: PluginInfo) -> None:
        existing = self.plugins.get(info.name)
        if existing is not None:
            self.failures.append(
                PluginFailure(
                    info,
                    "register",
                    f"plugin name {info.name!r} is already taken by {existing.describe()}; "
                    f"{info.describe()} was skipped. Uninstall one, or block one with "
                    f"{ENV_BLOCK}=<distribution name>",
                    "",
                )
            )
            return
        try:
            self.manager.register(plugin, name=info.name)
        except Exception as error:
            self._fail(info, "register", error)
            return
        problems = self._hook_problems(plugin)
        if problems:
            # a plugin whose hooks switchyard would silently never call (or call wrongly) is
            # refused whole: half a plugin working is worse than a clear failure
            self.manager.unregister(plugin)
            self.failures.append(
                PluginFailure(info, "register", "; ".join(problems) + _HOOK_HINT, "")
            )
            return
        self.plugins[info.name] = info

    def _hook_problems(self, plugin: object) -> list[str]:
        """What is wrong with a registered plugin's hooks: names no spec defines (misspelt),
        a known hook's name on a function not marked ``@hookimpl``, and wrappers on hooks that
        switchyard calls one implementation at a time."""
        problems = []
        marked = set()
        for caller in self.manager.get_hookcallers(plugin) or []:
            marked.add(caller.name)
            if caller.spec is None:
                close = difflib.get_close_matches(caller.name, _HOOK_NAMES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{caller.name!r} is not a switchyard hook{hint}")
                continue
            if caller.name in _CALLED_ONE_BY_ONE:
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                        problems.append(
                            f"{caller.name!r} is marked as a wrapper (wrapper=True or "
                            "hookwrapper=True), but switchyard calls each plugin's "
                            f"{caller.name} on its own and uses what it returns; remove the "
                            "wrapper option"
                        )
        for name in _HOOK_NAMES:
            if name not in marked and callable(getattr(plugin, name, None)):
                problems.append(
                    f"{name!r} is defined but not marked with @switchyard.hookimpl, so "
                    "switchyard would never call it"
                )
        return problems

    def _fail(self, info: PluginInfo, stage: str, error: BaseException) -> None:
        self.failures.append(
            PluginFailure(
                info,
                stage,
                f"{type(error).__name__}: {error}",
                "".join(traceback.format_exception(error)),
            )
        )

    # -- entries ----------------------------------------------------------------------------

    @property
    def hook(self) -> Any:
        """The pluggy hook relay, for lifecycle hooks: ``registry.hook.switchyard_post_setup(...)``."""
        return self.manager.hook

    def _collect(self) -> dict[EntryKind, list[Registration]]:
        collected: dict[EntryKind, list[Registration]] = {kind: [] for kind in ENTRY_TYPES}
        for kind, hook_name in HOOK_FOR_KIND.items():
            caller = getattr(self.manager.hook, hook_name)
            # each plugin's hook is called on its own: pluggy's loop would stop at the first error
            for impl in caller.get_hookimpls():
                info = self.plugins.get(impl.plugin_name) or PluginInfo(
                    impl.plugin_name, "explicit"
                )
                try:
                    result = impl.function()
                    entries = list(_as_entries(result))
                except Exception as error:
                    self._fail(info, hook_name, error)
                    continue
                wrong = [e for e in entries if not isinstance(e, ENTRY_TYPES[kind])]
                if wrong:
                    self.failures.append(
                        PluginFailure(
                            info,
                            hook_name,
                            f"{hook_name} must return {ENTRY_TYPES[kind].__name__} records, got "
                            f"{type(wrong[0]).__name__}: {wrong[0]!r}",
                            "",
                        )
                    )
                    continue
                collected[kind].extend(Registration(e, info) for e in entries)
        return collected

    def env_reports(self) -> list[tuple[PluginInfo, Mapping[str, Any]]]:
        """Each plugin's ``switchyard_env_report``, called on its own; a plugin that raises or
        returns something that is not a mapping is recorded in :attr:`failures`."""
        reports = []
        for impl in self.manager.hook.switchyard_env_report.get_hookimpls():
            info = self.plugins.get(impl.plugin_name) or PluginInfo(impl.plugin_name, "explicit")
            try:
                report = impl.function()
            except Exception as error:
                self._fail(info, "switchyard_env_report", error)
                continue
            if report is None:
                continue
            if not isinstance(report, Mapping):
                self.failures.append(
                    PluginFailure(
                        info,
                        "switchyard_env_report",
                        f"switchyard_env_report must return a mapping or None, got "
                        f"{type(report).__name__}: {report!r}",
                        "",
                    )
                )
                continue
            reports.append((info, report))
        return reports

    def registrations(self, kind: EntryKind) -> list[Registration]:
        """Every entry of ``kind`` registered by a plugin, including conflicting ones."""
        if self._registrations is None:
            self._registrations = self._collect()
        return list(self._registrations[kind])

    def names(self, kind: EntryKind) -> list[str]:
        """The names (not aliases) users can select for ``kind``, sorted."""
        return sorted({r.entry.name for r in self.registrations(kind)})

    def candidates(self, kind: EntryKind, name: str) -> list[Registration]:
        """The registrations answering to ``name`` (a name, alias or ``plugin:name``)."""
        name = normalize_name(name)
        plugin, sep, entry_name = name.rpartition(":")
        if not sep:
            entry_name, plugin = name, ""
        return [
            r
            for r in self.registrations(kind)
            if entry_name in r.entry.names and (not plugin or r.plugin.name == plugin)
        ]

    def get(self, kind: EntryKind, name: str) -> Registration | None:
        """The one registration for ``name``, ``None`` if there is none.

        Raises :class:`~switchyard.PluginConflictError` when two plugins claim the name and
        none was passed explicitly; the message names both and how to choose.
        """
        found = self.candidates(kind, name)
        if len(found) <= 1:
            return found[0] if found else None
        explicit = [r for r in found if r.plugin.source == "explicit"]
        if len(explicit) == 1:
            return explicit[0]
        claimants = "; ".join(
            f"plugin {r.plugin.describe()} registers {kind} {r.entry.name!r} "
            f"({r.entry.description or r.entry.factory})"
            for r in found
        )
        choices = ", ".join(f"'{r.plugin.name}:{r.entry.name}'" for r in found)
        raise PluginConflictError(
            f"{kind} {normalize_name(name)!r} is registered by {len(found)} plugins: {claimants}. "
            f"Choose one by its qualified name ({choices}), or block the other with "
            f"{ENV_BLOCK}=<plugin> or plugins=['no:<plugin>']."
        )

    def conflicts(self, kind: EntryKind) -> dict[str, list[Registration]]:
        """Names claimed by more than one plugin."""
        by_name: dict[str, list[Registration]] = {}
        for r in self.registrations(kind):
            for name in r.entry.names:
                by_name.setdefault(name, []).append(r)
        return {
            name: regs for name, regs in by_name.items() if len({r.plugin.name for r in regs}) > 1
        }


def _as_entries(result: object) -> Iterator[Any]:
    if result is None:
        return
    if isinstance(result, Entry):
        yield result
        return
    if isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
        yield result
        return
    yield from result


def _core_version() -> str | None:
    try:
        return importlib.metadata.version("switchyard")
    except importlib.metadata.PackageNotFoundError:
        return None


_default: PluginRegistry | None = None


def default_registry() -> PluginRegistry:
    """The process-wide registry (discovery runs once), used when no plugins are passed."""
    global _default
    if _default is None:
        _default = PluginRegistry()
    return _default


def reset_default_registry() -> None:
    """Forget the process-wide registry, so the next use rediscovers (after installing a plugin,
    or changing the ``SWITCHYARD_*`` variables)."""
    global _default
    _default = None


__all__ = [
    "PluginFailure",
    "PluginInfo",
    "PluginRegistry",
    "Registration",
    "default_registry",
    "reset_default_registry",
]
