"""Fixtures shared by the cross-package tests.

* Every test starts with no ``SWITCHYARD_*`` variable set and a fresh process-wide registry, and
  whatever a test sets (``seed_everything`` exports ``SWITCHYARD_GLOBAL_SEED``) is undone after it.
* ``plugin_site`` builds real installed distributions (``*.dist-info`` folders with
  ``entry_points.txt``) and plugin modules in a throwaway folder on ``sys.path``, so that
  discovery goes through ``importlib.metadata`` exactly as it does for a pip-installed plugin.
* ``make_plugin`` builds an explicit plugin object (a module carrying ``@hookimpl`` functions).
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import types
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from switchyard import hookimpl
from switchyard.registry import reset_default_registry


@pytest.fixture(autouse=True)
def _clean_switchyard_state() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("SWITCHYARD_")}
    for key in saved:
        del os.environ[key]
    reset_default_registry()
    yield
    for key in [k for k in os.environ if k.startswith("SWITCHYARD_")]:
        del os.environ[key]
    os.environ.update(saved)
    reset_default_registry()


class PluginSite:
    """A folder on ``sys.path`` holding distributions and modules written by a test.

    Module names get a per-test suffix (``site.module("acme", ...)`` returns ``"acme_1a2b3c4d"``)
    so that nothing a test imports can be confused with another test's modules.
    """

    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.token = token

    def name(self, base: str) -> str:
        """The unique module name for ``base``."""
        return f"{base}_{self.token}"

    def module(self, base: str, source: str) -> str:
        """Write a module; returns its (unique) import name."""
        name = self.name(base)
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return name

    def distribution(
        self,
        name: str,
        version: str = "1.0.0",
        entry_points: Mapping[str, str] | None = None,
        group: str = "switchyard",
        *,
        entry_points_text: str | bytes | None = None,
    ) -> Path:
        """Write ``<name>-<version>.dist-info`` with METADATA and an entry_points.txt whose
        ``[switchyard]`` group maps entry-point (plugin) names to module paths.

        ``entry_points_text`` is written as the whole ``entry_points.txt`` instead, as it is
        (bytes too), for files that are not valid."""
        folder = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        folder.mkdir()
        (folder / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        if entry_points_text is not None:
            target = folder / "entry_points.txt"
            if isinstance(entry_points_text, bytes):
                target.write_bytes(entry_points_text)
            else:
                target.write_text(entry_points_text)
            importlib.invalidate_caches()
            return folder
        lines = [f"[{group}]"] + [f"{ep} = {value}" for ep, value in (entry_points or {}).items()]
        (folder / "entry_points.txt").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()
        return folder


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginSite]:
    root = tmp_path / "site"
    root.mkdir()
    token = uuid.uuid4().hex[:8]
    monkeypatch.syspath_prepend(str(root))
    yield PluginSite(root, token)
    for name in [m for m in sys.modules if m.endswith(f"_{token}")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def make_plugin() -> Callable[..., types.ModuleType]:
    """``make_plugin("vendor", accelerators=[entry, ...])``: a plugin module named ``vendor``
    whose registration hooks return the given entries (or are the given functions);
    ``runtime_started=fn`` etc. add lifecycle hooks."""

    def make(name: str, **hooks: Any) -> types.ModuleType:
        plugin = types.ModuleType(name)
        for kind in ("accelerators", "strategies", "precisions", "environments"):
            if kind in hooks:
                value = hooks.pop(kind)
                hook = value if callable(value) else _returning(list(value))
                setattr(plugin, f"switchyard_{kind}", hookimpl(hook))
        for hook_name, function in hooks.items():
            setattr(plugin, f"switchyard_{hook_name}", hookimpl(function))
        return plugin

    return make


def _returning(entries: list[Any]) -> Callable[[], list[Any]]:
    def hook() -> list[Any]:
        return entries

    return hook
