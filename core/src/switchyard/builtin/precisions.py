"""The torch.amp precisions: ``32-true``, ``64-true``, ``16-mixed``, ``bf16-mixed``, ``16-true``,
``bf16-true``. Nothing here names a device: autocast and the gradient scaler take the device type
from the device the runtime binds."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils._pytree import tree_map

from switchyard.precision import Precision, overrides

_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _dtype(value: torch.dtype | str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    try:
        return _DTYPES[value]
    except KeyError:
        raise ValueError(f"dtype {value!r} is not one of {sorted(_DTYPES)}") from None


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create floating-point tensors in ``dtype`` while the context is active."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _convert_floats(data: Any, dtype: torch.dtype) -> Any:
    if isinstance(data, torch.Tensor):
        # the usual forward output: no torch.utils._pytree walk (several µs) for one tensor
        if torch.is_floating_point(data) and data.dtype != dtype:
            return data.to(dtype)
        return data

    def convert(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and torch.is_floating_point(x) and x.dtype != dtype:
            return x.to(dtype)
        return x

    return tree_map(convert, data)


class TruePrecision(Precision):
    """Parameters, inputs and computation all in one dtype: ``32-true``, ``64-true``,
    ``16-true``, ``bf16-true``. Outputs are returned in the default dtype (float32) unless the
    dtype is float64, which users pick to get float64 results."""

    def __init__(self, dtype: torch.dtype | str = torch.float32) -> None:
        self.param_dtype = _dtype(dtype)
        self.name = {
            torch.float32: "32-true",
            torch.float64: "64-true",
            torch.float16: "16-true",
            torch.bfloat16: "bf16-true",
        }[self.param_dtype]

    @property
    def wraps_forward(self) -> bool:
        return self.param_dtype != torch.float32

    def convert_module(self, module: nn.Module) -> nn.Module:
        if self.param_dtype == torch.float32:
            return module
        return module.to(dtype=self.param_dtype)

    def module_init_context(self) -> contextlib.AbstractContextManager[Any]:
        if self.param_dtype == torch.float32:
            return contextlib.nullcontext()
        return default_dtype(self.param_dtype)

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return self.module_init_context()

    def convert_input(self, data: Any) -> Any:
        return _convert_floats(data, self.param_dtype)

    def convert_output(self, data: Any) -> Any:
        if self.param_dtype == torch.float64:
            return data
        return _convert_floats(data, torch.get_default_dtype())


class MixedPrecision(Precision):
    """Parameters in float32, eligible operations autocast to ``dtype`` (``16-mixed``,
    ``bf16-mixed``). float16 gets a ``torch.amp.GradScaler`` by default, as torch.amp
    recommends, so small gradients do not underflow; bfloat16 has float32's range and needs none.
    """

    def __init__(
        self,
        dtype: torch.dtype | str = torch.bfloat16,
        scaler: torch.amp.GradScaler | bool | None = None,
    ) -> None:
        self.compute_dtype = _dtype(dtype)
        if self.compute_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"mixed precision computes in float16 or bfloat16, not {self.compute_dtype}"
            )
        self.name = "16-mixed" if self.compute_dtype == torch.float16 else "bf16-mixed"
        self._scaler_arg = scaler
        self._scaler_factory: Callable[[str], torch.amp.GradScaler] = torch.amp.GradScaler
        self.scaler: torch.amp.GradScaler | None = None
        # scaler state loaded before bind() created the scaler (a checkpoint restored before
        # setup); applied when it is created instead of being dropped
        self._pending_state: dict[str, Any] | None = None

    def set_scaler_factory(self, factory: Callable[[str], torch.amp.GradScaler]) -> None:
        self._scaler_factory = factory

    def bind(self, device: torch.device) -> None:
        super().bind(device)
        if isinstance(self._scaler_arg, torch.amp.GradScaler):
            self.scaler = self._scaler_arg
        elif self._uses_scaler():
            self.scaler = self._scaler_factory(device.type)
        if self.scaler is not None and self._pending_state:
            self.scaler.load_state_dict(self._pending_state)
        self._pending_state = None

    def _uses_scaler(self) -> bool:
        arg = self._scaler_arg
        return (
            isinstance(arg, torch.amp.GradScaler)
            or arg is True
            or (arg is None and self.compute_dtype == torch.float16)
        )

    @property
    def wraps_forward(self) -> bool:
        return True

    @property
    def wraps_backward(self) -> bool:
        # pre_backward only scales, and only with a scaler (known once bound)
        return self.scaler is not None or overrides(
            self, MixedPrecision, "pre_backward", "backward", "post_backward"
        )

    @property
    def wraps_optimizer_step(self) -> bool:
        return self.scaler is not None or overrides(self, MixedPrecision, "optimizer_step")

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device_type, dtype=self.compute_dtype)

    def convert_output(self, data: Any) -> Any:
        return _convert_floats(data, torch.get_default_dtype())

    def pre_backward(self, tensor: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        if self.scaler is not None:
            return self.scaler.scale(tensor)
        return tensor

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        if self.scaler is None:
            return optimizer.step(**kwargs)
        result = self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        return result

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def state_dict(self) -> dict[str, Any]:
        if self.scaler is not None:
            return self.scaler.state_dict()
        return dict(self._pending_state or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.scaler is not None:
            self.scaler.load_state_dict(state_dict)
        elif self._uses_scaler():
            self._pending_state = dict(state_dict)
