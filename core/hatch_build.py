"""Core's dependencies and extras, computed when core is built (hatchling metadata hook).

The first-party plugins are the folders ``../plugins/<name>`` that hold a ``pyproject.toml``.
The plugins listed in ``default-plugins`` (``[tool.hatch.metadata.hooks.custom]`` in
``pyproject.toml``) are dependencies; every other plugin folder becomes the extra ``<name>``.
An extra therefore exists only for a plugin that exists.

How a plugin is named in those requirements:

* a regular build in a checkout (``pip install ./core``, ``pip install './core[fsdp]'``) points
  at the folder, ``switchyard-fsdp @ file:///.../plugins/fsdp``, so that no package index has to
  hold the plugins;
* an editable build (``pip install -e ./core -e ./plugins/cpu ...``; ``build_backend.py`` tells
  this hook) and a release build (``SWITCHYARD_PLUGIN_SOURCE=index``) name the distribution,
  ``switchyard-fsdp``, which the editable plugin folders (or the index) then satisfy.

A wheel built from core's sdist reuses the requirements the sdist recorded (hatchling reads
``PKG-INFO``), since ``../plugins`` is not there.

A plugin folder can shape its extra with a ``[tool.switchyard]`` table in its own
``pyproject.toml``:

* ``extra-requires``: what the extra installs beside the plugin, typically the engine, e.g.
  ``["deepspeed"]``;
* ``in-all = false``: leave the extra out of ``[all]``. ``[all]`` is every extra whose engine
  installs beside the default torch from PyPI without a build. torch-xla and
  intel-extension-for-pytorch each pin a torch release of their own, and DeepSpeed is an sdist
  whose build imports torch, so the ``xla``, ``xpu`` and ``deepspeed`` plugins set
  ``in-all = false``: ``pip install 'switchyard[all]'`` must resolve, quickly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hatchling.metadata.plugin.interface import MetadataHookInterface

if sys.version_info >= (3, 11):
    import tomllib
else:  # hatchling depends on tomli there
    import tomli as tomllib

EDITABLE_FLAG = "_SWITCHYARD_EDITABLE_BUILD"
"""Set to ``1`` by ``build_backend.py`` while it runs an editable build."""


class PluginDependencies(MetadataHookInterface):
    """Fills ``project.dependencies`` and ``project.optional-dependencies``."""

    def update(self, metadata: dict[str, Any]) -> None:
        plugins_dir = Path(self.root).resolve().parent / "plugins"
        by_name = os.environ.get("SWITCHYARD_PLUGIN_SOURCE") == "index" or (
            os.environ.get(EDITABLE_FLAG) == "1"
        )
        defaults = list(self.config.get("default-plugins", []))
        plugins = {
            folder.name: _read_pyproject(folder / "pyproject.toml")
            for folder in sorted(plugins_dir.iterdir() if plugins_dir.is_dir() else [])
            if (folder / "pyproject.toml").is_file()
        }

        def requirement(name: str) -> str:
            project = plugins.get(name, {}).get("project", {})
            distribution = str(project.get("name", f"switchyard-{name}"))
            if by_name or name not in plugins:
                return distribution
            return f"{distribution} @ {(plugins_dir / name).as_uri()}"

        metadata["dependencies"] = [
            *self.config.get("dependencies", []),
            *(requirement(name) for name in defaults),
        ]
        extras: dict[str, list[str]] = {}
        in_all: list[str] = []
        for name, pyproject in plugins.items():
            if name in defaults:
                continue
            options = pyproject.get("tool", {}).get("switchyard", {})
            extras[name] = [requirement(name), *options.get("extra-requires", [])]
            if options.get("in-all", True):
                in_all.extend(extras[name])
        extras["all"] = sorted(set(in_all))
        for extra, requirements in self.config.get("extras", {}).items():
            extras[extra] = list(requirements)
        metadata["optional-dependencies"] = extras


def _read_pyproject(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        return tomllib.load(file)
