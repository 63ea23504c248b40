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
other plugins are unaffected. So is a distribution whose ``entry_points.txt`` cannot be read: the
installed distributions are read one at a time. Two distributions whose entry points have the
same name both load, each under a name qualified by its distribution (``cpu@switchyard-cpu``),
and the conflict is recorded naming both: no plugin shadows another. Each plugin's import time is
kept (:attr:`PluginInfo.import_seconds`); ``switchyard plugins`` flags those above
:data:`SLOW_IMPORT_SECONDS`. Lifecycle hooks are called one plugin at a time too
(:meth:`PluginRegistry.call_lifecycle_hook`), so an exception names the plugin that raised it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import os
import re
import time
import traceback
import types
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy

from switchyard import hookspecs
from switchyard.entries import (
    ENTRY_TYPES,
    HOOK_FOR_KIND,
    CheckpointFormatEntry,
    Entry,
    EntryKind,
    normalize_name,
)
from switchyard.errors import ArgumentError, PluginConflictError, PluginError, SelectionError
from switchyard.validation import parse_flag

ENV_DISABLE_AUTOLOAD = "SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOW = "SWITCHYARD_PLUGINS"
ENV_BLOCK = "SWITCHYARD_BLOCK_PLUGINS"

PluginSource = Literal["builtin", "entry-point", "explicit"]

SHARED_ALIAS_KINDS: frozenset[EntryKind] = frozenset({"accelerator"})
"""Kinds whose entries may share an alias without a conflict (``gpu`` for every GPU
accelerator): selection resolves such an alias to the available entry of highest priority among
those declaring it (:meth:`PluginRegistry.shared_alias`). Other kinds' names stay one plugin's."""

SLOW_IMPORT_SECONDS = 0.5
"""A plugin whose import and registration hooks take longer than this is flagged as slow by
``switchyard plugins``: discovery runs in every process, so it adds that much to every
``Runtime()`` and to every worker of a job."""

LIFECYCLE_HOOKS = (
    "switchyard_runtime_started",
    "switchyard_post_setup",
    "switchyard_runtime_teardown",
)
"""Hooks called on a running ``Runtime``, each plugin on its own
(:meth:`PluginRegistry.call_lifecycle_hook`)."""

_ENTRY_STAGES = ("factory", "create", "is_available", "detect", "name conflict")
"""Stages of failures recorded against one entry (``PluginFailure.entry``) when selection or
``switchyard plugins --check`` tried it; the plugin itself loaded."""

# an entry point's value: "module" or "module:attr.attr", optionally with [extras]
_ENTRY_POINT_VALUE = re.compile(r"^[\w.]+\s*(:\s*[\w.]+\s*)?(\[[^\]]*\])?\s*$")
# characters a plugin name may not hold: ':' qualifies entries, ',' separates the switches'
# lists, '@' qualifies a plugin by its distribution
_RESERVED_IN_PLUGIN_NAMES = (":", ",", "@")

_HOOK_NAMES = tuple(
    name for name in dir(hookspecs) if name.startswith(f"{hookspecs.PROJECT_NAME}_")
)
# hooks whose implementations switchyard calls itself, one plugin at a time, so that one failing
# plugin cannot hide the others: a pluggy wrapper around them would never run as one
_CALLED_ONE_BY_ONE = frozenset(
    (
        *hookspecs.REGISTRATION_HOOKS,
        *hookspecs.REPORT_HOOKS,
        *hookspecs.FORMAT_HOOKS,
        *LIFECYCLE_HOOKS,
    )
)
_HOOK_HINT = (
    ". The hooks a plugin may implement are documented in switchyard.hookspecs: "
    + ", ".join(_HOOK_NAMES)
)


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from.

    name: the plugin's registered name, e.g. ``"cpu"`` (the entry-point name); qualified by the
        distribution, ``"cpu@switchyard-cpu"``, when another distribution's entry point has the
        same name.
    source: ``"builtin"``, ``"entry-point"`` or ``"explicit"`` (passed as ``plugins=[...]``).
    distribution, version: the installed distribution providing it, e.g. ``"switchyard-cpu"``.
    target: what was loaded, e.g. ``"switchyard_cpu.plugin"``.
    entry_point: the entry point's own name (``"cpu"``), also when ``name`` is qualified.
    import_seconds: how long loading the entry point took (importing the module and what it
        imports); ``None`` for plugins switchyard did not import.
    """

    name: str
    source: PluginSource
    distribution: str | None = None
    version: str | None = None
    target: str | None = None
    entry_point: str | None = None
    import_seconds: float | None = field(default=None, compare=False)

    def describe(self) -> str:
        """``"cpu (switchyard-cpu 0.1.0)"``: the plugin and its distribution, for messages."""
        if self.distribution:
            return f"{self.name} ({self.distribution} {self.version or ''})".replace(" )", ")")
        return f"{self.name} ({self.source})"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin, one of its hooks or one of its entries, that could not be used.

    ``stage`` is ``"entry points"`` (the distribution's ``entry_points.txt``), ``"import"``,
    ``"register"``, ``"name"`` (its name is also another distribution's: both were kept, under
    qualified names), the name of the hook that failed, or, for one entry (``entry``, e.g.
    ``"strategy 'ghost'"``), ``"factory"`` (cannot be imported), ``"create"`` (construction
    raised or built the wrong type), ``"is_available"``, ``"detect"`` or ``"name conflict"``.
    """

    plugin: PluginInfo
    stage: str
    error: str
    traceback: str
    entry: str | None = None

    def describe(self) -> str:
        """``"ghost (switchyard-ghost 1.0.0), strategy 'ghost', at factory: ..."``."""
        entry = f", {self.entry}," if self.entry else ""
        return f"{self.plugin.describe()}{entry} at {self.stage}: {self.error}"

    @property
    def hides_entries(self) -> bool:
        """Whether the plugin's entries (some or all) are missing because of this failure."""
        return self.stage not in (*_ENTRY_STAGES, "name", *LIFECYCLE_HOOKS)


class PluginHookError(PluginError):
    """A plugin's lifecycle hook raised. ``failure`` is the record (plugin, hook, traceback);
    ``ran`` and ``not_ran`` are the plugins whose implementation of the hook had run before it
    and were not called after it. The plugin's exception is the ``__cause__``."""

    def __init__(
        self,
        message: str,
        failure: PluginFailure,
        ran: Sequence[PluginInfo] = (),
        not_ran: Sequence[PluginInfo] = (),
    ) -> None:
        super().__init__(message)
        self.failure = failure
        """The plugin that raised, the hook and the error."""
        self.ran = tuple(ran)
        """The plugins whose implementation of the hook ran before the failure."""
        self.not_ran = tuple(not_ran)
        """The plugins whose implementation of the hook did not run because of it."""


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


def autoload_disabled_by_environment() -> bool:
    """Whether ``SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD`` turns plugin autoload off: ``1``, ``true``,
    ``yes``, ``on`` do, ``0``, ``false``, ``no``, ``off`` or unset do not; anything else is an
    error rather than a guess (``maybe`` loaded every plugin before)."""
    value = os.environ.get(ENV_DISABLE_AUTOLOAD, "")
    try:
        return parse_flag(value)
    except ValueError as problem:
        raise SelectionError(
            f"{ENV_DISABLE_AUTOLOAD}={value[:80]!r} {problem}. Set it to 1 to load only the "
            f"built-in plugin and those named in {ENV_ALLOW}"
        ) from None


def check_plugins_argument(plugins: object, argument: str = "plugins") -> list[object]:
    """``plugins=`` checked and as a list: plugin modules or objects (each defining at least one
    ``switchyard_*`` hook) and ``"no:NAME"`` strings. An :class:`~switchyard.errors.ArgumentError`
    names what is wrong with anything else (``plugins="cpu"``, ``plugins=[42]``, ``"no:"``)."""
    if plugins is None:
        return []
    if isinstance(plugins, (str, bytes)) or not isinstance(plugins, Iterable):
        raise ArgumentError(
            f"{argument}={_argument_repr(plugins)} must be a list: of plugin modules or objects, of "
            "Accelerator/Strategy/Precision/ClusterEnvironment instances (Runtime only), or of "
            "'no:NAME' strings that block an installed plugin; e.g. plugins=['no:acme']"
        )
    items = list(plugins)
    for index, plugin in enumerate(items):
        if isinstance(plugin, str):
            if plugin.startswith("no:") and plugin[3:].strip():
                continue
            if plugin.startswith("no:"):
                raise ArgumentError(
                    f"{argument}[{index}]={plugin!r} names no plugin to block; write "
                    "'no:NAME' with an entry-point or distribution name (switchyard plugins "
                    "lists them)"
                )
            raise ArgumentError(
                f"{argument}[{index}]={plugin!r}: a string in plugins must be 'no:NAME' to "
                "block a plugin; pass plugin modules or objects themselves to register them"
            )
        try:
            hooks = [name for name in dir(plugin) if name.startswith(f"{hookspecs.PROJECT_NAME}_")]
        except Exception:
            hooks = []
        if not hooks:
            raise ArgumentError(
                f"{argument}[{index}]={_argument_repr(plugin)} ({type(plugin).__name__}) is not a "
                "plugin: it defines no switchyard_* hook. Pass a module or object with "
                "@switchyard.hookimpl functions (see switchyard.hookspecs), an "
                "Accelerator/Strategy/Precision/ClusterEnvironment instance to Runtime, or "
                "'no:NAME' to block an installed plugin"
            )
    return items


def _check_names(argument: str, names: object) -> None:
    """``allow=``/``block=``: a list of plugin or distribution names, not one string."""
    if names is None:
        return
    if (
        isinstance(names, (str, bytes))
        or not isinstance(names, Iterable)
        or not all(isinstance(name, str) and name.strip() for name in names)
    ):
        raise ArgumentError(
            f"{argument}={_argument_repr(names)} must be a list of plugin or distribution names "
            f"(non-empty strings), e.g. {argument}=['acme']"
        )


def _argument_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}..."


def _distribution_of(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    try:
        return _name_and_version(dist)
    except Exception:
        return None, None  # a METADATA file that cannot be read names nothing


def _read_dist_file(dist: importlib.metadata.Distribution, name: str) -> str | None:
    """``dist.read_text(name)``, through ``os`` for a distribution in a folder: discovery reads
    one file of every installed distribution, and pathlib's version costs about 80 us each."""
    folder = getattr(dist, "_path", None)
    if not isinstance(folder, os.PathLike):  # a zip archive's distribution, or another kind
        return dist.read_text(name)
    try:
        with open(os.path.join(os.fspath(folder), name), encoding="utf-8") as file:
            return file.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, KeyError):
        return None


_IDENTITIES: weakref.WeakKeyDictionary[importlib.metadata.Distribution, tuple[str, str]] = (
    weakref.WeakKeyDictionary()
)


def _name_and_version(dist: importlib.metadata.Distribution) -> tuple[str, str]:
    """A distribution's ``Name`` and ``Version``, read from the head of its METADATA.

    ``dist.metadata`` parses the whole file (long description included) with the email
    package, about 0.3 ms a distribution; discovery asks for every plugin's distribution
    several times, so this reads the two header lines once and falls back to the full parse
    for anything unusual."""
    known = _IDENTITIES.get(dist)
    if known is not None:
        return known
    name = version = None
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.split("\n\n", 1)[0].splitlines():
        field_name, _, value = line.partition(":")
        if field_name == "Name":
            name = value.strip()
        elif field_name == "Version":
            version = value.strip()
    if not name or not version:
        name, version = dist.metadata["Name"], dist.version
    _IDENTITIES[dist] = (name, version)
    return name, version


def block_hint(info: PluginInfo) -> str:
    """How a user stops a plugin from loading, for messages."""
    if info.source == "explicit":
        return "remove it from Runtime(plugins=[...])"
    if info.source == "builtin":
        return "the built-in plugin cannot be blocked"
    name = info.entry_point or info.name
    by = info.distribution or name
    return f"{ENV_BLOCK}={by} or Runtime(plugins=['no:{by}'])"


_HOOKABLE = (types.FunctionType, types.MethodType, staticmethod, classmethod)


def _cannot_be_hook(namespace: object, name: str) -> bool:
    """Whether ``name`` of a module plugin holds no function, method, ``classmethod`` or
    ``staticmethod``: a module's names are its ``__dict__``'s, so no static lookup is needed."""
    return type(namespace) is types.ModuleType and not isinstance(
        namespace.__dict__.get(name), _HOOKABLE
    )


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager with a shortcut for plugins that are modules, as every entry point's
    is: a name that cannot be a hook (:func:`_cannot_be_hook`) needs no
    ``inspect.getattr_static``. pluggy runs that lookup for each name of each plugin module
    (its imports included), which was about a fifth of discovery's time."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        if _cannot_be_hook(plugin, name):
            return None
        return super().parse_hookimpl_opts(plugin, name)

    def parse_hookspec_opts(
        self, module_or_class: types.ModuleType | type, name: str
    ) -> pluggy.HookspecOpts | None:
        if _cannot_be_hook(module_or_class, name):
            return None
        return super().parse_hookspec_opts(module_or_class, name)


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
        self.manager: pluggy.PluginManager = _PluginManager(hookspecs.PROJECT_NAME)
        """The pluggy plugin manager the plugins are registered with."""
        self.manager.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        """Plugins that failed to load or whose registration hooks raised, with the error;
        ``switchyard plugins`` lists them."""
        self.plugins: dict[str, PluginInfo] = {}
        self.hook_seconds: dict[str, float] = {}
        """Seconds each plugin's registration hooks took, by plugin name."""
        self._registrations: dict[EntryKind, list[Registration]] | None = None
        self._not_loaded: list[tuple[PluginInfo, str]] | None = []
        self._entry_points = list(entry_points) if entry_points is not None else None

        plugins = check_plugins_argument(plugins)
        _check_names("allow", allow)
        _check_names("block", block)
        if autoload is not None and not isinstance(autoload, bool):
            raise ArgumentError(f"autoload={autoload!r} must be True, False or None (the default)")
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
        blocked |= {normalize_name(b) for b in block}
        self._blocked_in_code = frozenset(blocked)
        blocked |= {normalize_name(b) for b in _split_env(ENV_BLOCK)}
        self.blocked = frozenset(blocked)
        """Names of the plugins not loaded: ``no:NAME`` in ``plugins``, ``block``, and the
        :data:`ENV_BLOCK` variable."""
        # autoload=False from code asks for the given plugins only: installed ones are then not
        # looked at at all; the environment switch is the user's, and not_loaded() lists them
        autoload_from_code = autoload is not None
        if autoload is None:
            autoload = not autoload_disabled_by_environment()
        allowed = [
            normalize_name(a) for a in (allow if allow is not None else _split_env(ENV_ALLOW))
        ]
        self.autoload = autoload
        self.allowed = tuple(allowed)
        """When not empty, the only installed plugins loaded (``allow``, else the
        :data:`ENV_ALLOW` variable)."""

        from switchyard import builtin

        # core's version is filled in below: the scan of the installed distributions reads it
        # on the way, where a lookup of its own would search sys.path again (about 2 ms)
        self._seen_core_version: str | None = None
        self._register(
            builtin, PluginInfo("builtin", "builtin", "switchyard", None, builtin.__name__)
        )
        if autoload or allowed:
            self._load_entry_points(self._entry_points, allowed)
        elif not autoload_from_code:
            self._not_loaded = None  # listed on demand, by not_loaded()
        if "builtin" in self.plugins:
            self.plugins["builtin"] = dataclasses.replace(
                self.plugins["builtin"], version=self._seen_core_version or _core_version()
            )
        for index, plugin in enumerate(explicit):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
            self._register(plugin, PluginInfo(str(name), "explicit", target=str(name)))
        if autoload or allowed:
            self._warn_unknown_blocks()

    def _warn_unknown_blocks(self) -> None:
        """Warn about each blocked name (``plugins=["no:NAME"]``, ``block=``,
        ``SWITCHYARD_BLOCK_PLUGINS``) that no installed entry point or distribution has: a
        misspelt block blocks nothing, and the plugin it meant is loaded."""
        if not self.blocked:
            return
        try:
            points = (
                self._entry_points
                if self._entry_points is not None
                else importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME)
            )
            known = {_key(ep.name) for ep in points} | {
                _key(_distribution_of(ep)[0] or "") for ep in points
            }
        except Exception:
            return  # unreadable metadata is recorded by loading; nothing to compare with
        for name in sorted(self.blocked):
            if _key(name) not in known:
                close = difflib.get_close_matches(_key(name), sorted(known - {""}), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                warnings.warn(
                    f"plugin {name!r} is blocked (plugins=['no:{name}'], block= or {ENV_BLOCK}), "
                    f"but no installed plugin or distribution has that name, so nothing was "
                    f"blocked.{hint} Installed: {', '.join(sorted(known - {''})) or 'none'}",
                    RuntimeWarning,
                    stacklevel=3,
                )

    # -- loading ----------------------------------------------------------------------------

    def _installed_entry_points(self) -> list[importlib.metadata.EntryPoint]:
        """The ``switchyard`` entry points of the installed distributions, read one distribution
        at a time: ``importlib.metadata.entry_points()`` raises for everyone when a single
        distribution's ``entry_points.txt`` is not valid, which is recorded here against that
        distribution instead. A distribution visible twice on ``sys.path`` counts once (the
        first), as ``importlib.metadata.entry_points()`` has it."""
        group = hookspecs.PROJECT_NAME
        points: list[importlib.metadata.EntryPoint] = []
        seen: set[str] = set()
        for dist in importlib.metadata.distributions():
            key = getattr(dist, "_normalized_name", None)
            try:
                if key is None:
                    key = _key(_name_and_version(dist)[0] or "")
                if key in seen:
                    continue
                seen.add(key)
                if key == "switchyard" and self._seen_core_version is None:
                    self._seen_core_version = _name_and_version(dist)[1]
                text = _read_dist_file(dist, "entry_points.txt")
                if not text or group not in text:
                    continue  # most distributions: nothing for switchyard, nothing parsed
                found = [ep for ep in dist.entry_points if ep.group == group]
            except Exception as error:
                self.record(
                    PluginFailure(
                        _dist_info(dist),
                        "entry points",
                        f"its entry_points.txt cannot be read ({_error_text(error)}), so none "
                        "of its plugins loads; reinstall or uninstall it",
                        "".join(traceback.format_exception(error)),
                    )
                )
                continue
            if not found:
                bad = [
                    line.strip()
                    for line in text.splitlines()
                    if line.strip().startswith("[")
                    and group in line
                    and not re.fullmatch(r"\[[^\[\]]+\]", line.strip())
                ]
                if bad:
                    self._failure(
                        _dist_info(dist),
                        "entry points",
                        f"entry_points.txt has a section header {bad[0]!r} that is not valid, "
                        f"so no '{group}' entry point was read from it; the header must be "
                        f"'[{group}]'. Reinstall or fix the distribution",
                    )
            points.extend(found)
        return points

    def _classify(
        self,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None,
        allowed: Sequence[str],
        *,
        autoload: bool,
    ) -> tuple[list[tuple[importlib.metadata.EntryPoint, PluginInfo]], set[str]]:
        """The entry points to load, each with its :class:`PluginInfo`, and every plugin and
        distribution name seen; the others are recorded as not loaded (with why) or as
        failures (a malformed entry point)."""
        if entry_points is None:
            entry_points = self._installed_entry_points()
        blocked_in_code = {_key(b) for b in self._blocked_in_code}
        blocked = {_key(b) for b in self.blocked}
        allowed_keys = {_key(a) for a in allowed}
        chosen: list[tuple[importlib.metadata.EntryPoint, PluginInfo]] = []
        not_loaded: list[tuple[PluginInfo, str]] = []
        seen: set[tuple[str, str]] = set()
        found: set[str] = set()

        def order(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
            return ep.name, _distribution_of(ep)[0] or ""

        for ep in sorted(entry_points, key=order):
            # one distribution visible twice on sys.path yields the same entry point twice
            if (ep.name, ep.value) in seen:
                continue
            seen.add((ep.name, ep.value))
            dist, version = _distribution_of(ep)
            name = normalize_name(ep.name)
            info = PluginInfo(name, "entry-point", dist, version, ep.value, entry_point=name)
            keys = {_key(name), _key(dist or "")} - {""}
            found |= keys
            problem = _entry_point_problem(ep)
            if problem is not None:
                self._failure(info, "entry points", problem)
                continue
            if keys & blocked:
                how = (
                    "plugins=['no:...'] (or block=...)"
                    if keys & blocked_in_code
                    else f"{ENV_BLOCK}={os.environ.get(ENV_BLOCK, '')}"
                )
                not_loaded.append((info, f"blocked by {how}"))
                continue
            if allowed and not keys & allowed_keys:
                not_loaded.append((info, f"not in {ENV_ALLOW}={','.join(allowed)}"))
                continue
            if not autoload and not allowed:
                not_loaded.append((info, f"plugin autoload is off ({ENV_DISABLE_AUTOLOAD})"))
                continue
            chosen.append((ep, info))
        self._not_loaded = not_loaded
        return chosen, found

    def _load_entry_points(
        self,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None,
        allowed: Sequence[str],
    ) -> None:
        chosen, found = self._classify(entry_points, allowed, autoload=True)
        # a plugin name claimed by several distributions: none may shadow the others, so each
        # loads under a name qualified by its distribution, and the conflict is recorded
        claims: dict[str, list[PluginInfo]] = {}
        for _, info in chosen:
            first = next(
                (
                    c
                    for c in claims.get(info.name, [])
                    if _key(c.distribution or "") == _key(info.distribution or "")
                ),
                None,
            )
            if first is not None:
                self._failure(
                    info,
                    "entry points",
                    f"distribution {info.distribution} declares the '{hookspecs.PROJECT_NAME}' "
                    f"entry point {info.name!r} twice ({first.target!r} and {info.target!r}); "
                    "only the first was loaded. Fix its entry_points.txt",
                )
                continue
            claims.setdefault(info.name, []).append(info)
        for ep, info in chosen:
            claimants = claims.get(info.name, [])
            if info not in claimants:
                continue  # a second entry point of one name in one distribution
            if len(claimants) > 1:
                info = dataclasses.replace(info, name=_qualified(info))
            start = time.perf_counter()
            try:
                plugin = ep.load()
            except BaseException as error:
                if isinstance(error, KeyboardInterrupt):
                    raise
                info = dataclasses.replace(info, import_seconds=time.perf_counter() - start)
                self._fail(info, "import", error)
                continue
            info = dataclasses.replace(info, import_seconds=time.perf_counter() - start)
            if self._register(plugin, info) and len(claimants) > 1:
                self._failure(
                    info,
                    "name",
                    f"the '{hookspecs.PROJECT_NAME}' entry point name {info.entry_point!r} is "
                    f"used by {len(claimants)} distributions: "
                    + ", ".join(f"{c.distribution} {c.version or ''}".rstrip() for c in claimants)
                    + f". None shadows another: this one is loaded as {info.name!r}, and its "
                    f"entries are selected as usual, or qualified as "
                    f"'{_key(info.distribution or info.name)}:<name>'. To keep only one, block "
                    f"the other (this one: {block_hint(info)})",
                )
        for name in allowed:
            if _key(name) not in found:
                self._failure(
                    PluginInfo(name, "entry-point"),
                    "import",
                    f"{ENV_ALLOW} names {name!r}, but no installed distribution provides a "
                    f"'{hookspecs.PROJECT_NAME}' entry point of that name; installed: "
                    f"{sorted(found) or 'none'}",
                )

    def not_loaded(self) -> list[tuple[PluginInfo, str]]:
        """Installed entry-point plugins that were not loaded, each with why: blocked
        (``SWITCHYARD_BLOCK_PLUGINS``, ``plugins=["no:..."]``), not in ``SWITCHYARD_PLUGINS``,
        or autoload off. With autoload off the installed entry points are read only now."""
        if self._not_loaded is None:
            self._classify(self._entry_points, self.allowed, autoload=False)
        return list(self._not_loaded or ())

    def _register(self, plugin: object, info: PluginInfo) -> bool:
        existing = self.plugins.get(info.name)
        if existing is not None:
            # a name taken by the built-in plugin or by a plugin passed in code: keep this one
            # too, under its qualified name, rather than letting either hide the other
            qualified = _qualified(info)
            if qualified in self.plugins or qualified == info.name:
                self._failure(
                    info,
                    "register",
                    f"plugin name {info.name!r} is already taken by {existing.describe()}; "
                    f"{info.describe()} was skipped. Uninstall one, or block one with "
                    f"{ENV_BLOCK}=<distribution name>",
                )
                return False
            info = dataclasses.replace(info, name=qualified)
            self._failure(
                info,
                "name",
                f"plugin name {existing.name!r} is already taken by {existing.describe()}, so "
                f"{info.distribution or info.source}'s plugin of that name is loaded as "
                f"{qualified!r}; block it if it is not wanted: {block_hint(info)}",
            )
        try:
            self.manager.register(plugin, name=info.name)
        except Exception as error:
            self._fail(info, "register", error)
            return False
        problems = self._hook_problems(plugin)
        if problems:
            # a plugin whose hooks switchyard would silently never call (or call wrongly) is
            # refused whole: half a plugin working is worse than a clear failure
            self.manager.unregister(plugin)
            self._failure(info, "register", "; ".join(problems) + _HOOK_HINT)
            return False
        self.plugins[info.name] = info
        return True

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

    def _fail(
        self, info: PluginInfo, stage: str, error: BaseException, entry: str | None = None
    ) -> PluginFailure | None:
        return self.record(
            PluginFailure(
                info,
                stage,
                _error_text(error),
                "".join(traceback.format_exception(error)),
                entry,
            )
        )

    def _failure(self, info: PluginInfo, stage: str, message: str) -> None:
        self.record(PluginFailure(info, stage, message, ""))

    def record(self, failure: PluginFailure) -> PluginFailure | None:
        """Add ``failure`` to :attr:`failures`, unless the same one is recorded already (the
        default registry serves every ``Runtime`` of a process); returns it if it is new."""
        key = (failure.plugin.name, failure.stage, failure.entry, failure.error)
        if any((f.plugin.name, f.stage, f.entry, f.error) == key for f in self.failures):
            return None
        self.failures.append(failure)
        return failure

    def record_entry_failure(
        self, registration: Registration, stage: str, error: BaseException | str
    ) -> PluginFailure | None:
        """Record that one entry could not be used (``stage``: ``"factory"``, ``"create"``,
        ``"is_available"``, ``"detect"`` or ``"name conflict"``); selection calls this for each
        entry ``"auto"`` skips. Returns the failure if it is new."""
        entry = f"{registration.kind} {registration.name!r}"
        if isinstance(error, str):
            return self.record(PluginFailure(registration.plugin, stage, error, "", entry))
        return self._fail(registration.plugin, stage, error, entry)

    def plugin_info(self, name: str) -> PluginInfo:
        """The :class:`PluginInfo` of a registered plugin, by its registered name."""
        return self.plugins.get(name) or PluginInfo(name, "explicit")

    def hook_names(self, plugin_name: str) -> list[str]:
        """The hooks a registered plugin implements, sorted."""
        plugin = self.manager.get_plugin(plugin_name)
        if plugin is None:
            return []
        return sorted(c.name for c in self.manager.get_hookcallers(plugin) or [])

    # -- lifecycle hooks --------------------------------------------------------------------

    def call_lifecycle_hook(
        self, hook_name: str, *, stop: bool = True, consequence: str = "", **kwargs: Any
    ) -> list[PluginFailure]:
        """Call each plugin's implementation of ``hook_name`` on its own, in pluggy's order (the
        last registered first, ``tryfirst``/``trylast`` respected), with the keyword arguments
        each one declares.

        With ``stop`` (``switchyard_runtime_started``, ``switchyard_post_setup``), the first
        implementation that raises ends the call: :class:`PluginHookError` names the plugin and
        its distribution, which plugins had run and which were not called, and ``consequence``
        (what the caller does about it), chained to the plugin's exception. Without ``stop``
        (``switchyard_runtime_teardown``) every implementation is called and the failures are
        returned. Every failure is also recorded in :attr:`failures`."""
        caller = getattr(self.manager.hook, hook_name)
        impls = list(reversed(caller.get_hookimpls()))
        failures: list[PluginFailure] = []
        for index, impl in enumerate(impls):
            info = self.plugin_info(impl.plugin_name)
            try:
                impl.function(*[kwargs[name] for name in impl.argnames])
            except (Exception, SystemExit) as error:
                failure = PluginFailure(
                    info, hook_name, _error_text(error), "".join(traceback.format_exception(error))
                )
                self.record(failure)
                if not stop:
                    failures.append(failure)
                    continue
                ran = [self.plugin_info(i.plugin_name) for i in impls[:index]]
                not_ran = [self.plugin_info(i.plugin_name) for i in impls[index + 1 :]]
                raise PluginHookError(
                    f"plugin {info.describe()} raised in {hook_name}: {failure.error}. "
                    + (f"{consequence} " if consequence else "")
                    + f"{hook_name} had run for: "
                    + (", ".join(i.describe() for i in ran) or "no other plugin")
                    + "; not called for: "
                    + (", ".join(i.describe() for i in not_ran) or "no other plugin")
                    + f". Fix or update the plugin, or stop it from loading: {block_hint(info)}.",
                    failure,
                    ran,
                    not_ran,
                ) from error
        return failures

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
                info = self.plugin_info(impl.plugin_name)
                start = time.perf_counter()
                try:
                    result = impl.function()
                    entries = list(_as_entries(result))
                except (Exception, SystemExit) as error:
                    self._fail(info, hook_name, error)
                    continue
                finally:
                    self.hook_seconds[info.name] = (
                        self.hook_seconds.get(info.name, 0.0) + time.perf_counter() - start
                    )
                wrong = [e for e in entries if not isinstance(e, ENTRY_TYPES[kind])]
                if wrong:
                    self._failure(
                        info,
                        hook_name,
                        f"{hook_name} must return {ENTRY_TYPES[kind].__name__} records, got "
                        f"{type(wrong[0]).__name__}: {_short_repr(wrong[0])}",
                    )
                    continue
                collected[kind].extend(Registration(e, info) for e in entries)
        return collected

    def env_reports(self) -> list[tuple[PluginInfo, Mapping[str, Any]]]:
        """Each plugin's ``switchyard_env_report``, called on its own; a plugin that raises or
        returns something that is not a mapping is recorded in :attr:`failures`."""
        reports = []
        for impl in self.manager.hook.switchyard_env_report.get_hookimpls():
            info = self.plugin_info(impl.plugin_name)
            try:
                report = impl.function()
            except (Exception, SystemExit) as error:
                self._fail(info, "switchyard_env_report", error)
                continue
            if report is None:
                continue
            if not isinstance(report, Mapping):
                self._failure(
                    info,
                    "switchyard_env_report",
                    f"switchyard_env_report must return a mapping or None, got "
                    f"{type(report).__name__}: {_short_repr(report)}",
                )
                continue
            reports.append((info, report))
        return reports

    def checkpoint_formats(self) -> list[tuple[PluginInfo, CheckpointFormatEntry]]:
        """Each plugin's ``switchyard_checkpoint_formats``, called on its own; a plugin that
        raises or returns anything but :class:`CheckpointFormatEntry` records is recorded in
        :attr:`failures`."""
        hook = "switchyard_checkpoint_formats"
        formats: list[tuple[PluginInfo, CheckpointFormatEntry]] = []
        for impl in getattr(self.manager.hook, hook).get_hookimpls():
            info = self.plugin_info(impl.plugin_name)
            try:
                entries = list(_as_entries(impl.function()))
            except (Exception, SystemExit) as error:
                self._fail(info, hook, error)
                continue
            wrong = [e for e in entries if not isinstance(e, CheckpointFormatEntry)]
            if wrong:
                self._failure(
                    info,
                    hook,
                    f"{hook} must return CheckpointFormatEntry records, got "
                    f"{type(wrong[0]).__name__}: {_short_repr(wrong[0])}",
                )
                continue
            formats.extend((info, entry) for entry in entries)
        return formats

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
            if entry_name in r.entry.names and (not plugin or _qualifies(plugin, r.plugin))
        ]

    def get(self, kind: EntryKind, name: str) -> Registration | None:
        """The one registration for ``name``, ``None`` if there is none.

        Raises :class:`~switchyard.PluginConflictError` when two plugins claim the name and
        none was passed explicitly; the message names both and how to choose. Two cases are no
        conflict: an entry that yields to plugins (:func:`yields_to_plugins`) steps aside for
        the other plugin's entry, and an alias several accelerators share
        (:meth:`shared_alias`) answers with the one of highest priority (selection picks the
        highest *available* one).
        """
        found = self.candidates(kind, name)
        if len(found) > 1:
            found = _without_yielding(found)
        if len(found) <= 1:
            return found[0] if found else None
        shared = self.shared_alias(kind, name)
        if shared is not None:
            return shared[0]
        explicit = [r for r in found if r.plugin.source == "explicit"]
        if len(explicit) == 1:
            return explicit[0]
        claimants = "; ".join(
            f"plugin {r.plugin.describe()} registers {kind} {r.entry.name!r} "
            f"({r.entry.description or r.entry.factory})"
            for r in found
        )
        choices = ", ".join(f"'{_qualifier(r.plugin)}:{r.entry.name}'" for r in found)
        raise PluginConflictError(
            f"{kind} {normalize_name(name)!r} is registered by {len(found)} plugins: {claimants}. "
            f"Choose one by its qualified name ({choices}), or block the other with "
            f"{ENV_BLOCK}=<plugin> or plugins=['no:<plugin>']."
        )

    def conflicts(self, kind: EntryKind) -> dict[str, list[Registration]]:
        """Names claimed by more than one plugin, leaving out the two cases :meth:`get`
        settles: an entry that yields to another plugin's, and a shared alias."""
        by_name: dict[str, list[Registration]] = {}
        for r in self.registrations(kind):
            for name in r.entry.names:
                by_name.setdefault(name, []).append(r)
        conflicting = {}
        for name, regs in by_name.items():
            regs = _without_yielding(regs)
            if len({r.plugin.name for r in regs}) > 1 and self.shared_alias(kind, name) is None:
                conflicting[name] = regs
        return conflicting

    def shared_alias(self, kind: EntryKind, name: str) -> list[Registration] | None:
        """The entries that declare ``name`` as an alias, highest priority first (the first
        registered among equals), when ``name`` is an alias several entries of ``kind`` may
        share: ``kind`` is one of :data:`SHARED_ALIAS_KINDS` and no entry has ``name`` as its
        own name. ``None`` otherwise. ``gpu``, declared by the cuda, rocm, mps and xpu
        accelerators, is one: ``accelerator="gpu"`` means whichever of them is available."""
        name = normalize_name(name)
        if kind not in SHARED_ALIAS_KINDS or ":" in name:
            return None
        registrations = self.registrations(kind)
        if any(r.entry.name == name for r in registrations):
            return None
        declaring = [r for r in registrations if name in r.entry.aliases]
        if not declaring:
            return None
        return sorted(declaring, key=lambda r: -r.entry.priority)


def yields_to_plugins(registration: Registration) -> bool:
    """Whether the entry steps aside for any other plugin's entry that claims its name: the
    built-in plugin's accelerators do. They are the generic accelerator of a device a PyTorch
    extension registered (:mod:`switchyard.builtin.torch_device`), and a vendor's plugin for
    that device is the better description of it. Selection also lets another entry declaring
    the same device type win over them."""
    return registration.plugin.source == "builtin" and registration.kind == "accelerator"


def _without_yielding(registrations: list[Registration]) -> list[Registration]:
    """The registrations less those that yield to another plugin's among them."""
    kept = [r for r in registrations if not yields_to_plugins(r)]
    return kept or registrations


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


def _qualified(info: PluginInfo) -> str:
    """``cpu@switchyard-cpu``: the plugin's name qualified by its distribution."""
    base = info.entry_point or info.name
    return f"{base}@{_key(info.distribution or info.target or info.source)}"


def _qualifies(qualifier: str, info: PluginInfo) -> bool:
    """Whether ``plugin:name``'s plugin part names this plugin: its registered name, its
    entry-point name, or its distribution's name (compared as pip compares them)."""
    if qualifier == info.name or (info.entry_point and qualifier == info.entry_point):
        return True
    # a plugin passed in code has no distribution of its own
    return (
        info.source != "explicit"
        and info.distribution is not None
        and _key(qualifier) == _key(info.distribution)
    )


def _qualifier(info: PluginInfo) -> str:
    """The shortest plugin part of a qualified name that names this plugin alone."""
    if "@" in info.name and info.distribution:
        return _key(info.distribution)
    return info.name


def _dist_info(dist: importlib.metadata.Distribution) -> PluginInfo:
    """A :class:`PluginInfo` standing for a whole distribution, before any plugin is known."""
    name: str | None
    try:
        name, version = _name_and_version(dist)
    except Exception:
        name, version = None, None
    where = getattr(dist, "_path", None)
    label = name or (str(where) if where is not None else "unknown distribution")
    return PluginInfo(_key(label) if name else label, "entry-point", name or label, version)


def _entry_point_problem(ep: importlib.metadata.EntryPoint) -> str | None:
    """Why an entry point cannot be a plugin, or ``None``."""
    name = ep.name.strip()
    if not name:
        return f"an entry point has an empty name (value {ep.value!r}); name it after the plugin"
    reserved = [c for c in _RESERVED_IN_PLUGIN_NAMES if c in name]
    if reserved:
        return (
            f"entry point name {name!r} holds {reserved[0]!r}, which plugin names may not "
            "(':' qualifies entry names, ',' separates the plugin switches' lists, '@' "
            "qualifies a plugin by its distribution); rename it"
        )
    if not _ENTRY_POINT_VALUE.match(ep.value or ""):
        return (
            f"entry point {name!r} = {ep.value!r} is not 'package.module' or "
            "'package.module:attribute'; fix the distribution's entry_points.txt"
        )
    return None


def _error_text(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"SystemExit: sys.exit({error.code!r}) was called"
    return f"{type(error).__name__}: {error}"


def _short_repr(value: object, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception as error:
        text = f"<repr raised {type(error).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    "LIFECYCLE_HOOKS",
    "SHARED_ALIAS_KINDS",
    "SLOW_IMPORT_SECONDS",
    "PluginFailure",
    "PluginHookError",
    "PluginInfo",
    "PluginRegistry",
    "Registration",
    "block_hint",
    "default_registry",
    "reset_default_registry",
    "yields_to_plugins",
]
