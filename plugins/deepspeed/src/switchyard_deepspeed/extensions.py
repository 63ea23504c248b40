"""Where DeepSpeed's just-in-time compiled ops are cached, so that they are compiled once.

DeepSpeed builds its CPU ops (CPU Adam, the shared-memory communication op every CPU process
group loads) with ``torch.utils.cpp_extension.load`` on first use, into ``TORCH_EXTENSIONS_DIR``.
Each build takes tens of seconds; a later process finding the build there (same sources, same
flags) only loads it. The directory chosen here lies outside any checkout, under switchyard's
cache, and is keyed by the Python, torch and DeepSpeed versions and by the environment (its
builds use include paths inside it), so that two environments never share (and never rebuild
over each other) one build. Processes of one job building the same op at once wait
for each other (torch holds a lock file in the op's folder).

A build killed midway leaves torch's ``lock`` file in the op's folder, and every later build of
that op would wait for it forever; :func:`use_cache` removes such a file once it is older than
:data:`STALE_LOCK_S` (no build of one op takes that long), with a warning.

A ``TORCH_EXTENSIONS_DIR`` set by the user is always kept (and its locks left alone).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
import time
import warnings
from pathlib import Path

import torch

VARIABLE = "TORCH_EXTENSIONS_DIR"

STALE_LOCK_S = 30 * 60
"""The age after which a build lock in switchyard's cache is taken for a killed build's."""


def default_directory() -> Path:
    """``$SWITCHYARD_CACHE/torch_extensions/<key>`` (``~/.cache/switchyard`` by default), the key
    naming the Python, torch and DeepSpeed versions and the environment (a hash of
    ``sys.prefix``), e.g. ``py3.11-torch2.13.0_cpu-deepspeed0.19.8-1a2b3c4d``."""
    try:
        deepspeed_version = importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        deepspeed_version = "none"
    # the environment too: DeepSpeed compiles with include paths inside it, so a build made
    # for one environment is rebuilt (minutes) by another that shares the folder
    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:8]
    key = (
        f"py{sys.version_info.major}.{sys.version_info.minor}-torch{torch.__version__}-"
        f"deepspeed{deepspeed_version}-{environment}"
    ).replace("+", "_")
    cache = os.environ.get("SWITCHYARD_CACHE") or str(Path.home() / ".cache" / "switchyard")
    return Path(cache) / "torch_extensions" / key


def use_cache(directory: str | os.PathLike[str] | None = None) -> Path:
    """Point ``TORCH_EXTENSIONS_DIR`` at ``directory`` (default :func:`default_directory`)
    unless the user set it, and return the directory in use. Must run before DeepSpeed builds
    or loads an op; the strategy calls it in every process before importing DeepSpeed."""
    current = os.environ.get(VARIABLE)
    if current:
        return Path(current)
    chosen = Path(directory) if directory is not None else default_directory()
    chosen.mkdir(parents=True, exist_ok=True)
    remove_stale_locks(chosen)
    os.environ[VARIABLE] = str(chosen)
    return chosen


def remove_stale_locks(directory: Path, older_than: float = STALE_LOCK_S) -> list[Path]:
    """Delete the build locks (``<op>/lock``) under ``directory`` older than ``older_than``
    seconds, which only a killed build leaves; returns them."""
    removed = []
    now = time.time()
    for lock in directory.glob("*/lock"):
        try:
            if now - lock.stat().st_mtime > older_than:
                lock.unlink()
                removed.append(lock)
        except OSError:
            continue
    if removed:
        warnings.warn(
            f"removed the build lock(s) {', '.join(map(str, removed))}, left by a build of "
            "DeepSpeed's ops that was killed; the op is built again",
            RuntimeWarning,
            stacklevel=2,
        )
    return removed
