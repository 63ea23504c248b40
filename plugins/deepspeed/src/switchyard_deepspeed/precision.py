"""What the runtime sees of DeepSpeed's precision.

DeepSpeed casts the module's parameters itself (``bf16``/``fp16`` sections of its config), keeps
the float32 master weights in its optimizer and scales the loss in ``engine.backward``.
:meth:`DeepSpeedStrategy.connect_precision` therefore replaces the user's precision with
:class:`DeepSpeedPrecision`, which only converts floating-point inputs to the module's dtype and
outputs back to float32: no autocast and no ``GradScaler`` of switchyard's runs beside
DeepSpeed's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_map

from switchyard.precision import Precision


def _cast_floats(data: Any, dtype: torch.dtype) -> Any:
    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and torch.is_floating_point(x) and x.dtype != dtype:
            return x.to(dtype)
        return x

    return tree_map(cast, data)


class DeepSpeedPrecision(Precision):
    """The precision a DeepSpeed engine runs: ``name`` is the one the user selected;
    ``param_dtype`` the dtype of the engine's module (bfloat16 under ``bf16-mixed``, float16
    under ``16-mixed``, float32 under ``32-true``)."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.param_dtype = dtype
        self.compute_dtype = None

    @property
    def wraps_forward(self) -> bool:
        return self.param_dtype != torch.float32

    def convert_input(self, data: Any) -> Any:
        return _cast_floats(data, self.param_dtype)

    def convert_output(self, data: Any) -> Any:
        return _cast_floats(data, torch.float32)
