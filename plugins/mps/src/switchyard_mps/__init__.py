"""switchyard-mps: the MPS accelerator plugin (Apple silicon GPUs through ``torch.mps``).

``MPSAccelerator`` is imported on first use, so that discovering the plugin (which imports this
package for its ``plugin`` module) loads nothing but the entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchyard_mps.accelerator import MPSAccelerator

__all__ = ["MPSAccelerator"]


def __getattr__(name: str) -> Any:
    if name == "MPSAccelerator":
        from switchyard_mps.accelerator import MPSAccelerator

        return MPSAccelerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
