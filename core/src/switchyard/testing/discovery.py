"""Measuring what discovering one plugin imports, in a fresh interpreter.

The kit runs this file's source with ``python -c SOURCE PLUGIN`` (not ``-m``, which would
import the ``switchyard.testing`` package, pytest with it, before measuring). It imports
switchyard (and so torch), then loads only the plugin's entry point and calls its registration
hooks, and prints as JSON the modules that this added, the time it took, the entries found and
any failure. ``builtin`` measures core's own built-in plugin. Only the standard library is
imported at the top of this file.

The kit runs it with torch's device-extension autoload off (:data:`AUTOLOAD_VARIABLE` ``=0``):
``import torch`` then loads no out-of-tree backend (``torch.backends`` entry points), so what an
extension imports is neither blamed on the plugin nor hides what the plugin imports itself. The
output names the extensions that were left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchyard.entries import EntryKind

KINDS: tuple[EntryKind, ...] = ("accelerator", "strategy", "precision", "environment")

HEAVY_ENGINES = (
    "torch_xla",
    "deepspeed",
    "intel_extension_for_pytorch",
    "transformer_engine",
    "torch_npu",
    "habana_frameworks",
    "apex",
    "megatron",
    "triton",
)
"""Engines the design names as never to be imported by listing plugins, and their peers; a
discovery that imports one fails the check whatever the plugin's own package is."""

AUTOLOAD_VARIABLE = "TORCH_DEVICE_BACKEND_AUTOLOAD"
"""torch's switch for loading out-of-tree device extensions at ``import torch`` ("1" by default,
"0" off)."""


def measure(plugin: str) -> dict[str, Any]:
    """Discover ``plugin`` alone in this process and report what that imported."""
    import switchyard  # noqa: F401  # the baseline: what every switchyard process has loaded
    from switchyard.registry import PluginRegistry

    before = set(sys.modules)
    start = time.perf_counter()
    if plugin == "builtin":
        registry = PluginRegistry(autoload=False, allow=[])
    else:
        registry = PluginRegistry(autoload=False, allow=[plugin])
    entries = [
        {"kind": kind, "name": r.entry.name, "plugin": r.plugin.name}
        for kind in KINDS
        for r in registry.registrations(kind)
        if r.plugin.name == plugin
    ]
    seconds = time.perf_counter() - start
    new_modules = sorted(set(sys.modules) - before)
    autoload = os.environ.get(AUTOLOAD_VARIABLE, "1")
    return {
        "plugin": plugin,
        "new_modules": new_modules,
        "seconds": seconds,
        "torch_device_backend_autoload": autoload,
        "torch_backends_not_loaded": [] if autoload == "1" else _torch_backends(),
        "entries": entries,
        "failures": [
            f"{f.plugin.describe()} at {f.stage}: {f.error}"
            for f in registry.failures
            if f.plugin.name == plugin
        ],
    }


def _torch_backends() -> list[str]:
    """The out-of-tree device extensions ``import torch`` would autoload (after measuring)."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group="torch.backends")})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m switchyard.testing.discovery")
    parser.add_argument("plugin", help="entry-point name of the plugin, or 'builtin'")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.plugin)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
