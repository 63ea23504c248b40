"""switchyard-cpu: the CPU accelerator plugin.

``CPUAccelerator`` is imported on first use, so that discovering the plugin (which imports this
package for its ``plugin`` module) loads nothing but the entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchyard_cpu.accelerator import CPUAccelerator

__all__ = ["CPUAccelerator"]


def __getattr__(name: str) -> Any:
    if name == "CPUAccelerator":
        from switchyard_cpu.accelerator import CPUAccelerator

        return CPUAccelerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
