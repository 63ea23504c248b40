"""The strategies the checkpoint suites run under (tests/test_checkpoint_safety.py,
tests/test_checkpoint_kills.py and the scripts beside this file), in one place.

A strategy added later (DeepSpeed...) is added here, and every checkpoint suite runs it: its
checkpoints are written, every file of them crafted into a payload and loaded, and its saves are
killed. The crafted-pickle suite fails on a file kind it has no crafting rule for, so a new
format cannot slip through untested.

Each entry: ``devices`` (processes of the job, on the CPU accelerator), ``directory`` (its
checkpoints are directories, replaced by two renames), ``kills`` (SIGKILL trials ``(in CI, under
SWITCHYARD_STRESS=1)``), ``modules`` (imported by the kill suite's parent process before it forks
jobs, so that a forked job starts at once; the first is the package the strategy needs, which
:func:`missing` looks for) and ``kwargs`` for ``Runtime``.

The DeepSpeed strategies need DeepSpeed, which only the environment of scripts/test-deepspeed
holds: elsewhere their cases skip. DeepSpeed's own optimizer state is flat shards that
``switchyard.checkpoint.load`` leaves out, so the kill suite checks its parameters only.
"""

from __future__ import annotations

import importlib.util
from typing import Any

_DEEPSPEED_MODULES = (
    "deepspeed",
    "switchyard_deepspeed.strategy",
    "switchyard_deepspeed.checkpoint",
    # imported by the first deepspeed.initialize of a process (ZeRO's optimizer check): it
    # compiles Muon's kernels with torch.compile, which imports torch's inductor (8 s of CPU
    # per process on 2 cores); imported once in the kill suite's zygote instead of per job
    "deepspeed.runtime.zero.muon.muon_optimizer",
)

STRATEGIES: dict[str, dict[str, Any]] = {
    "single_device": {
        "devices": 1,
        "directory": False,
        "kills": (6, 50),
        "modules": (),
        "kwargs": {},
    },
    "ddp": {
        "devices": 2,
        "directory": False,
        "kills": (2, 20),
        "modules": ("switchyard_ddp.strategy",),
        "kwargs": {},
    },
    "fsdp": {
        "devices": 2,
        "directory": True,
        "kills": (3, 20),
        "modules": (
            "switchyard_fsdp.strategy",
            "torch.distributed.checkpoint",
            "torch.distributed.fsdp",
        ),
        "kwargs": {},
    },
    "deepspeed_stage_1": {
        "devices": 2,
        "directory": True,
        "kills": (2, 20),
        "modules": _DEEPSPEED_MODULES,
        "kwargs": {},
    },
    "deepspeed_stage_2": {
        "devices": 2,
        "directory": True,
        "kills": (2, 20),
        "modules": _DEEPSPEED_MODULES,
        "kwargs": {},
    },
    "deepspeed_stage_3": {
        "devices": 2,
        "directory": True,
        "kills": (5, 30),
        "modules": _DEEPSPEED_MODULES,
        "kwargs": {},
    },
}


def runtime_kwargs(name: str) -> dict[str, Any]:
    """``Runtime(**runtime_kwargs(name))`` for the strategy ``name`` on the CPU."""
    spec = STRATEGIES[name]
    return {"accelerator": "cpu", "strategy": name, "devices": spec["devices"], **spec["kwargs"]}


def missing(name: str) -> str | None:
    """Why the strategy ``name`` cannot run in this environment (a skip reason), or None."""
    modules = STRATEGIES[name]["modules"]
    if not modules or importlib.util.find_spec(modules[0].split(".")[0]) is not None:
        return None
    if name.startswith("deepspeed"):
        return "needs deepspeed: scripts/test-deepspeed"
    return f"needs {modules[0].split('.')[0]}"
