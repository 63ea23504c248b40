"""What a run was measured on: the machine, its load, and the versions of what ran."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from benchmarks.environments import run_json_child

PACKAGES = ("torch", "switchyard", "lightning", "accelerate", "deepspeed", "numpy")
"""Packages whose versions a run records, where an environment has them."""

_VERSIONS = f"""\
import json, platform
from importlib import metadata
versions = {{"python": platform.python_version()}}
for name in {PACKAGES!r}:
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps(versions))
"""


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (other programs competing for the cores)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    """The processor's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe() -> dict[str, Any]:
    """The machine: processor, cores, memory, operating system."""
    memory_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def versions(python: Path) -> dict[str, str]:
    """Python's and the benchmarked packages' versions in the environment of ``python``."""
    data: dict[str, str] = run_json_child(python, ["-c", _VERSIONS], timeout=120)
    return data
