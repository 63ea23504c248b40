"""switchyard-deepspeed: DeepSpeed's ZeRO stages 1-3 and offload as switchyard strategies.

``DeepSpeedStrategy`` and the checkpoint functions are imported on first use, so that listing
plugins does not import DeepSpeed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchyard_deepspeed.checkpoint import consolidate, load_full
    from switchyard_deepspeed.strategy import DeepSpeedStrategy

__all__ = ["DeepSpeedStrategy", "consolidate", "load_full"]


def __getattr__(name: str) -> Any:
    if name == "DeepSpeedStrategy":
        from switchyard_deepspeed.strategy import DeepSpeedStrategy

        return DeepSpeedStrategy
    if name in ("consolidate", "load_full"):
        from switchyard_deepspeed import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'switchyard_deepspeed' has no attribute {name!r}")
