"""switchyard-rocm: the ROCm accelerator plugin (AMD GPUs through a ROCm build of torch).

``ROCmAccelerator`` is imported on first use, so that discovering the plugin (which imports this
package for its ``plugin`` module) loads nothing but the entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchyard_rocm.accelerator import ROCmAccelerator

__all__ = ["ROCmAccelerator"]


def __getattr__(name: str) -> Any:
    if name == "ROCmAccelerator":
        from switchyard_rocm.accelerator import ROCmAccelerator

        return ROCmAccelerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
