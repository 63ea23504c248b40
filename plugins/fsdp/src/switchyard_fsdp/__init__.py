"""switchyard-fsdp: fully sharded data parallel training on FSDP2 (``fully_shard``).

``FSDPStrategy`` is imported on first use, so that listing plugins does not import
``torch.distributed.fsdp``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchyard_fsdp.strategy import FSDPStrategy

__all__ = ["FSDPStrategy"]


def __getattr__(name: str) -> Any:
    if name == "FSDPStrategy":
        from switchyard_fsdp.strategy import FSDPStrategy

        return FSDPStrategy
    raise AttributeError(f"module 'switchyard_fsdp' has no attribute {name!r}")
