"""switchyard-ddp: data-parallel training with ``torch.nn.parallel.DistributedDataParallel``.

``DDPStrategy`` is imported on first use, so that discovering the plugin (which imports this
package for its ``plugin`` module) loads nothing but the entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchyard_ddp.strategy import DDPStrategy

__all__ = ["DDPStrategy"]


def __getattr__(name: str) -> Any:
    if name == "DDPStrategy":
        from switchyard_ddp.strategy import DDPStrategy

        return DDPStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
