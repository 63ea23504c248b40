"""Make a switchyard checkout importable and discoverable by a Python that has torch, without pip.

``run_gpu.sh`` uses it on machines where nothing can be downloaded (nor hatchling be assumed):
it writes into one folder, for core and each ``plugins/<name>``, a
``<name>-<version>.dist-info`` holding ``METADATA`` and the ``entry_points.txt`` its
``pyproject.toml`` declares, and prints a ``PYTHONPATH`` made of that folder, ``core/src`` and
every ``plugins/<name>/src``. ``importlib.metadata`` then finds the plugins through their entry
points as it would after ``pip install -e``; worker processes inherit the variable.

    python tests/hardware/gpu_site.py SITE_DIR     # prints the PYTHONPATH to use
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PLUGINS = ("cpu", "ddp")  # core/pyproject.toml [tool.hatch.metadata.hooks.custom]


def read_project(pyproject: Path) -> tuple[str, str, dict[str, str]]:
    """(distribution name, version, the ``switchyard`` entry points) of one ``pyproject.toml``."""
    text = pyproject.read_text(encoding="utf-8")
    if tomllib is not None:
        project = tomllib.loads(text).get("project", {})
        points = project.get("entry-points", {}).get("switchyard", {})
        return str(project["name"]), str(project.get("version", "0")), dict(points)
    name = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M)
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    points = {}
    section = re.search(r"^\[project\.entry-points\.switchyard\]\n((?:[^\[\n].*\n?)*)", text, re.M)
    if section:
        for line in section.group(1).splitlines():
            key, sep, value = line.partition("=")
            if sep:
                points[key.strip()] = value.strip().strip('"')
    if name is None:
        raise SystemExit(f"{pyproject}: no project name")
    return name.group(1), version.group(1) if version else "0", points


def write_dist_info(
    site: Path, name: str, version: str, points: dict[str, str], requires: list[str]
) -> None:
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (folder / "METADATA").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if points:
        body = "[switchyard]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
        (folder / "entry_points.txt").write_text(body, encoding="utf-8")


def main(site_dir: str) -> None:
    site = Path(site_dir).resolve()
    site.mkdir(parents=True, exist_ok=True)
    sources = [ROOT / "core" / "src"]
    plugin_requires = []
    for pyproject in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        folder = pyproject.parent
        name, version, points = read_project(pyproject)
        write_dist_info(site, name, version, points, ["switchyard", "torch"])
        sources.append(folder / "src")
        marker = "" if folder.name in DEFAULT_PLUGINS else f'; extra == "{folder.name}"'
        plugin_requires.append(f"{name}{marker}")
    core_name, core_version, _ = read_project(ROOT / "core" / "pyproject.toml")
    write_dist_info(site, core_name, core_version, {}, ["torch", "pluggy", *plugin_requires])
    print(":".join([str(site), *(str(s) for s in sources)]))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
