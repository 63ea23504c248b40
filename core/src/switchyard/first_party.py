"""Which first-party plugin provides a name, for install hints in errors.

Nothing here changes behaviour: selection only asks it, while it words an error, which command
would install the plugin a user asked for (``strategy="fsdp"`` without switchyard-fsdp).

There is no list of names in code. The first-party plugins are the ones the installed
``switchyard`` distribution declares in its metadata: the ``switchyard-<plugin>`` requirements it
installs by default (``cpu``, ``ddp``), and each extra that installs ``switchyard-<extra>``
(``fsdp``; every plugin that is written gets one). A name belongs to a plugin when the plugin's
name is the whole name or one of its ``_``/``-``-separated parts: ``ddp_spawn`` -> ``ddp``,
``fsdp_cpu_offload`` -> ``fsdp`` (the first part that is a plugin wins), ``deepspeed_stage_3``
-> ``deepspeed``, ``single_xla`` -> ``xla``, once those extras exist. A plugin that does not exist
yet is therefore never suggested, and neither is a name that shares no part with a plugin.

The metadata is read only when one of these functions is called, that is on error paths; never
at import or during plugin discovery.
"""

from __future__ import annotations

import importlib.metadata
import re

from switchyard.entries import EntryKind

_DISTRIBUTION = "switchyard"
_PREFIX = "switchyard-"


def plugin_for(kind: EntryKind, name: str) -> str | None:
    """The first-party plugin that provides ``name``, e.g. ``plugin_for("strategy", "fsdp")``
    is ``"fsdp"``; ``None`` for names no first-party plugin of this switchyard provides.

    ``kind`` is accepted for the callers' sake; plugins are matched by name alone."""
    defaults, extras = _first_party_plugins()
    plugins = defaults | extras
    if not plugins:
        return None
    normalized = name.strip().lower()
    for candidate in (normalized, *re.split(r"[_\-]+", normalized)):
        if candidate in plugins:
            return candidate
    return None


def install_command(plugin: str) -> str:
    """The command that installs a first-party plugin with its engine."""
    defaults, extras = _first_party_plugins()
    if plugin in extras:
        return f"pip install 'switchyard[{plugin}]' (in a switchyard checkout: pip install './core[{plugin}]')"
    if plugin in defaults:
        return f"pip install switchyard-{plugin} (in a switchyard checkout: pip install ./plugins/{plugin})"
    return f"pip install switchyard-{plugin}"


def _first_party_plugins() -> tuple[frozenset[str], frozenset[str]]:
    """(plugins installed by default, plugins installed through an extra of their name), from
    the ``Requires-Dist`` lines of the installed ``switchyard``; both empty if its metadata
    cannot be read (switchyard imported from a source tree that was never installed)."""
    try:
        requirements = importlib.metadata.requires(_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return frozenset(), frozenset()
    defaults: set[str] = set()
    extras: set[str] = set()
    for line in requirements:
        requirement, _, marker = line.partition(";")
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if match is None:
            continue
        distribution = _normalize(match.group(1))
        if not distribution.startswith(_PREFIX):
            continue
        plugin = distribution[len(_PREFIX) :]
        marker_extras = {
            _normalize(extra) for extra in re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        }
        if not marker.strip():
            defaults.add(plugin)
        elif plugin in marker_extras:
            extras.add(plugin)
    return frozenset(defaults), frozenset(extras)


def _normalize(name: str) -> str:
    """Distribution and extra names compare as PEP 503/685 say: case and runs of ``-_.``
    do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()
