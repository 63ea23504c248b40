"""switchyard-xla: XLA devices through torch_xla's PJRT runtime.

The accelerator ``xla`` (TPU, GPU or CPU, as ``PJRT_DEVICE`` says) and three strategies:
``single_xla`` (one process, one device), ``xla`` (one process per device, started by
``torch_xla.launch``) and ``xla_spmd`` (one process driving every device through a sharded
device mesh). Nothing is imported here: discovering the plugin loads only its entries, and
torch_xla is imported when an XLA piece is first asked a question.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from switchyard_xla.accelerator import XLAAccelerator
    from switchyard_xla.spmd import XLASPMDStrategy
    from switchyard_xla.strategy import SingleXLAStrategy, XLAStrategy

__all__ = ["XLAAccelerator", "SingleXLAStrategy", "XLAStrategy", "XLASPMDStrategy"]

_WHERE = {
    "XLAAccelerator": "switchyard_xla.accelerator",
    "SingleXLAStrategy": "switchyard_xla.strategy",
    "XLAStrategy": "switchyard_xla.strategy",
    "XLASPMDStrategy": "switchyard_xla.spmd",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
