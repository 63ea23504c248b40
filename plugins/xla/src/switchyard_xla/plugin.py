"""The hook implementations switchyard discovers through the ``switchyard`` entry point ``xla``.

Nothing here imports torch_xla: the entries name their implementations as strings and list
``torch_xla`` in ``requires``, so that without it installed every entry shows as not usable,
saying so, and discovery stays cheap with it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator, Mapping
from typing import Any

from switchyard import AcceleratorEntry, StrategyEntry, hookimpl

_REQUIRES = ("torch_xla",)
_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")


@hookimpl
def switchyard_accelerators() -> Iterator[AcceleratorEntry]:
    yield AcceleratorEntry(
        name="xla",
        factory="switchyard_xla.accelerator:XLAAccelerator",
        description="XLA devices through torch_xla's PJRT runtime (TPU, GPU, CPU: PJRT_DEVICE)",
        requires=_REQUIRES,
        # above the GPU accelerators (100): it is usable only on a TPU host or where the user
        # named a PJRT device (PJRT_DEVICE), and then it is what they asked for
        priority=110,
    )


@hookimpl
def switchyard_strategies() -> Iterator[StrategyEntry]:
    # priority 20: above single_device and ddp (0 and 10), which also run on an XLA device but
    # leave the step undelimited (the lazy graph grows until something reads a value)
    yield StrategyEntry(
        name="single_xla",
        factory="switchyard_xla.strategy:SingleXLAStrategy",
        description="One process on one XLA device; steps end with torch_xla.sync()",
        requires=_REQUIRES,
        accelerators=("xla",),
        precisions=_PRECISIONS,
        priority=20,
        aliases=("xla_single",),
    )
    yield StrategyEntry(
        name="xla",
        factory="switchyard_xla.strategy:XLAStrategy",
        description="One process per XLA device, started by torch_xla.launch; launch(fn)",
        requires=_REQUIRES,
        accelerators=("xla",),
        precisions=_PRECISIONS,
        distributed=True,
        priority=20,
    )
    yield StrategyEntry(
        name="xla_spmd",
        factory="switchyard_xla.spmd:XLASPMDStrategy",
        description="One process driving every XLA device through a sharded device mesh (SPMD)",
        requires=_REQUIRES,
        accelerators=("xla",),
        precisions=_PRECISIONS,
        priority=5,
    )


@hookimpl
def switchyard_env_report() -> Mapping[str, Any]:
    versions: dict[str, str] = {}
    for distribution in ("torch-xla", "libtpu"):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "versions": versions,
        # the PJRT device, its device counts, and XLA's own switches (XLA_FLAGS, XLA_USE_SPMD)
        "variables": (
            "PJRT_",
            "XLA_",
            "CPU_NUM_DEVICES",
            "GPU_NUM_DEVICES",
            "TPU_",
            "LIBTPU_INIT_ARGS",
        ),
    }
