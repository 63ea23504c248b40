"""switchyard-xpu: Intel GPUs through ``torch.xpu``, and opt-in Intel Extension for PyTorch.

* ``XPUAccelerator``: the ``xpu`` accelerator (alias ``gpu``), chosen by ``auto`` where an Intel
  GPU is visible and no NVIDIA one is.
* ``IPEXOptimization``: ``ipex.optimize`` applied to the module and optimizer after
  ``runtime.setup``, on Intel GPUs and CPUs alike:
  ``Runtime(accelerator="cpu", precision="bf16-mixed", plugins=[IPEXOptimization()])``.

Both are imported on first use, so that discovering the plugin (which imports this package for
its ``plugin`` module) loads nothing but the entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchyard_xpu.accelerator import XPUAccelerator
    from switchyard_xpu.optimization import IPEXOptimization

__all__ = ["IPEXOptimization", "XPUAccelerator"]


def __getattr__(name: str) -> Any:
    if name == "XPUAccelerator":
        from switchyard_xpu.accelerator import XPUAccelerator

        return XPUAccelerator
    if name == "IPEXOptimization":
        from switchyard_xpu.optimization import IPEXOptimization

        return IPEXOptimization
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
