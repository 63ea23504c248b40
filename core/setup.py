"""Dependencies of the core distribution.

Released wheels name first-party plugins by distribution (``switchyard-xla``). Built from a
checkout, where ``../plugins/<name>`` exists, they point at that folder instead, so that
``pip install ./core`` and ``pip install './core[xla]'`` work without a package index holding
the plugins. Set ``SWITCHYARD_PLUGIN_SOURCE=index`` to name plugins by distribution from a checkout too
(release builds, and editable installs of core beside editable plugins).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
PLUGINS = HERE.parent / "plugins"

BASE = ["torch>=2.8", "pluggy>=1.5"]
DEFAULT_PLUGINS = ["cpu", "ddp"]
# extra -> (first-party plugin, third-party engine requirements)
EXTRAS = {
    "cuda": ("cuda", []),
    "rocm": ("rocm", []),
    "mps": ("mps", []),
    "xla": ("xla", ["torch-xla"]),
    "xpu": ("xpu", ["intel-extension-for-pytorch"]),
    "fsdp": ("fsdp", ["numpy"]),
    "deepspeed": ("deepspeed", ["deepspeed"]),
}


def plugin_requirement(name: str) -> str:
    folder = PLUGINS / name
    if (
        os.environ.get("SWITCHYARD_PLUGIN_SOURCE") != "index"
        and (folder / "pyproject.toml").is_file()
    ):
        return f"switchyard-{name} @ {folder.as_uri()}"
    return f"switchyard-{name}"


extras = {
    extra: [plugin_requirement(plugin), *engines] for extra, (plugin, engines) in EXTRAS.items()
}
extras["all"] = sorted({req for reqs in extras.values() for req in reqs})

setup(
    install_requires=[*BASE, *(plugin_requirement(p) for p in DEFAULT_PLUGINS)],
    extras_require=extras,
)
