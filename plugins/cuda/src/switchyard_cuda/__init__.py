"""switchyard-cuda: the CUDA accelerator plugin (NVIDIA GPUs through ``torch.cuda``).

``CUDAAccelerator`` is imported on first use, so that discovering the plugin (which imports this
package for its ``plugin`` module) loads nothing but the entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchyard_cuda.accelerator import CUDAAccelerator

__all__ = ["CUDAAccelerator"]


def __getattr__(name: str) -> Any:
    if name == "CUDAAccelerator":
        from switchyard_cuda.accelerator import CUDAAccelerator

        return CUDAAccelerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
