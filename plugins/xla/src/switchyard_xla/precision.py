"""bf16-mixed through XLA's autocast."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.utils._pytree import tree_map

from switchyard import Precision


class XLAMixedPrecision(Precision):
    """float32 parameters, eligible operations autocast to bfloat16 on the XLA device.

    On XLA:TPU and XLA:NEURON this is ``torch_xla.amp.autocast``. Elsewhere (XLA's CPU and GPU
    devices) torch_xla 2.9's class turns itself off with a printed warning, so the same
    dispatch key it would use, ``torch.autocast("xla")``, is entered directly. bfloat16 has
    float32's range: no gradient scaler.
    """

    param_dtype = torch.float32
    compute_dtype: torch.dtype | None = torch.bfloat16

    def __init__(self, name: str = "bf16-mixed") -> None:
        self.name = name
        self._device: torch.device | None = None

    def bind(self, device: torch.device) -> None:
        super().bind(device)
        self._device = device

    @property
    def wraps_forward(self) -> bool:
        return True

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        import torch_xla.core.xla_model as xm

        device = self._device if self._device is not None else torch.device("xla")
        if xm.xla_device_hw(device) in ("TPU", "NEURON"):
            import torch_xla.amp

            return torch_xla.amp.autocast(device, dtype=torch.bfloat16)
        return torch.autocast("xla", dtype=torch.bfloat16)

    def convert_output(self, data: Any) -> Any:
        default = torch.get_default_dtype()

        def convert(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and torch.is_floating_point(x) and x.dtype != default:
                return x.to(default)
            return x

        return tree_map(convert, data)
