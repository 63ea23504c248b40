"""The hook implementations switchyard discovers through the ``switchyard`` entry point ``xpu``.

Only the accelerator is declared here. IPEX optimisation is opt-in, per run: pass
``switchyard_xpu.IPEXOptimization()`` in ``Runtime(plugins=[...])``; an installed plugin that
optimised every model would change what users get merely by installing the extra.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator, Mapping
from typing import Any

from switchyard import AcceleratorEntry, hookimpl

IPEX_DISTRIBUTION = "intel-extension-for-pytorch"


@hookimpl
def switchyard_accelerators() -> Iterator[AcceleratorEntry]:
    yield AcceleratorEntry(
        name="xpu",
        factory="switchyard_xpu.accelerator:XPUAccelerator",
        description="Intel GPUs through torch.xpu (xccl between processes)",
        # above the CPU (0), below CUDA (100): a machine with both kinds of GPU trains on the
        # NVIDIA one unless asked (accelerator='xpu')
        priority=90,
        aliases=("gpu",),
    )


@hookimpl
def switchyard_env_report() -> Mapping[str, Any]:
    import torch

    versions: dict[str, str | None] = {"xpu (torch build)": getattr(torch.version, "xpu", None)}
    try:
        # read from the distribution's metadata: importing IPEX loads its kernels
        versions["intel_extension_for_pytorch"] = importlib.metadata.version(IPEX_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        versions["intel_extension_for_pytorch"] = None
    return {
        "versions": versions,
        "variables": (
            "ZE_AFFINITY_MASK",
            "ONEAPI_DEVICE_SELECTOR",
            "ZE_FLAT_DEVICE_HIERARCHY",
            "SYCL_",
            "CCL_",
            "IPEX_",
        ),
    }
