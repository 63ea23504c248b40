"""The Precision interface: which dtypes parameters and computation use, and how backward scales."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer


class Precision:
    """Full-precision default and base class for precision plugins.

    Every method has a no-op default, so a precision overrides only what it changes. The runtime
    asks :attr:`wraps_forward` once at setup: when it is ``False``, the module wrapper calls the
    module directly, with no per-step context managers or input conversion.

    The lifecycle: :meth:`bind` (once the device is known), :meth:`module_init_context` and
    :meth:`convert_module` (setup), then per step :meth:`forward_context`,
    :meth:`convert_input`, :meth:`convert_output`, :meth:`pre_backward`, :meth:`backward`,
    :meth:`post_backward`, :meth:`optimizer_step`.
    """

    name: str = "32-true"
    """The name this precision was selected by; set by the registry for entries."""

    param_dtype: torch.dtype = torch.float32
    """The dtype parameters are stored in after :meth:`convert_module`."""

    compute_dtype: torch.dtype | None = None
    """The dtype autocast computes in, or ``None`` when there is no autocast."""

    device_type: str = "cpu"

    def bind(self, device: torch.device) -> None:
        """Called once when the device is known, before any other method. Default: remember its
        type, which autocast needs."""
        self.device_type = device.type

    @property
    def wraps_forward(self) -> bool:
        """Whether :meth:`forward_context`, :meth:`convert_input` or :meth:`convert_output` do
        anything. ``False`` lets the runtime skip them on every step."""
        return False

    def set_scaler_factory(self, factory: Callable[[str], torch.amp.GradScaler]) -> None:
        """Build this precision's gradient scaler, if it uses one, as ``factory(device_type)``
        instead of ``torch.amp.GradScaler(device_type)``. Strategies call it from
        ``Strategy.connect_precision``, before :meth:`bind`: FSDP passes ``ShardedGradScaler``,
        whose inf/NaN check agrees across the processes' gradient shards. Default: nothing (no
        scaler)."""

    def convert_module(self, module: nn.Module) -> nn.Module:
        """Convert a module's parameters and buffers at setup (e.g. ``module.to(bfloat16)``)."""
        return module

    def module_init_context(self) -> contextlib.AbstractContextManager[Any]:
        """A context under which modules are created directly in :attr:`param_dtype`."""
        return contextlib.nullcontext()

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        """A context around the module's forward (autocast for mixed precision)."""
        return contextlib.nullcontext()

    def convert_input(self, data: Any) -> Any:
        """Convert floating-point inputs before forward (e.g. to ``bfloat16`` for ``bf16-true``)."""
        return data

    def convert_output(self, data: Any) -> Any:
        """Convert floating-point outputs after forward (back to the default dtype)."""
        return data

    def pre_backward(self, tensor: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        """Transform the loss before backward (a gradient scaler multiplies it here)."""
        return tensor

    def backward(
        self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any
    ) -> None:
        """Run backward. Override only for engines with their own backward."""
        tensor.backward(*args, **kwargs)

    def post_backward(self, tensor: torch.Tensor, module: nn.Module | None) -> None:
        """Called after backward."""

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        """Step the optimizer (a gradient scaler steps and updates here)."""
        return optimizer.step(**kwargs)

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Bring gradients back to true scale before clipping. Default: they already are."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (a gradient scaler's scale and growth tracker)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def teardown(self) -> None:
        """Release resources at the end of a run."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
