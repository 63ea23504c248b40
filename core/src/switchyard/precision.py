"""The Precision interface: which dtypes parameters and computation use, and how backward scales."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer


def overrides(obj: object, base: type, *names: str) -> bool:
    """Whether ``obj`` uses, for any of ``names``, something other than what ``base`` defines:
    a subclass of ``base`` redefined it, or it was set on ``obj`` itself.

    The runtime asks it once, at setup, to know which per-step methods of a precision or strategy
    are the defaults that do nothing and may be skipped. A precision that overrides
    :attr:`Precision.wraps_backward` or :attr:`Precision.wraps_optimizer_step` (because its
    override is a no-op in some configurations) calls it with its own class as ``base``, so that a
    subclass replacing the methods again is still seen.
    """
    cls = type(obj)
    instance = getattr(obj, "__dict__", {})
    return any(name in instance or getattr(cls, name) is not getattr(base, name) for name in names)


class Precision:
    """Full-precision default and base class for precision plugins.

    Every method has a no-op default, so a precision overrides only what it changes. The runtime
    asks :attr:`wraps_forward`, :attr:`wraps_backward` and :attr:`wraps_optimizer_step` once at
    setup: where one is ``False``, the matching per-step methods are not called at all (the module
    is called directly, ``loss.backward()`` and ``optimizer.step()`` run as in plain PyTorch).

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
    """The type of the device the precision runs on (set by :meth:`bind`), for autocast."""

    def bind(self, device: torch.device) -> None:
        """Called once when the device is known, before any other method. Default: remember its
        type, which autocast needs."""
        self.device_type = device.type

    @property
    def wraps_forward(self) -> bool:
        """Whether :meth:`forward_context`, :meth:`convert_input` or :meth:`convert_output` do
        anything. ``False`` lets the runtime skip them on every step."""
        return False

    @property
    def wraps_backward(self) -> bool:
        """Whether :meth:`pre_backward`, :meth:`backward` or :meth:`post_backward` do more than
        ``tensor.backward()``; read once the precision is bound. ``False`` lets the runtime call
        ``tensor.backward()`` directly. Default: whether this precision replaces any of them
        (see :func:`overrides`)."""
        return overrides(self, Precision, "pre_backward", "backward", "post_backward")

    @property
    def wraps_optimizer_step(self) -> bool:
        """Whether :meth:`optimizer_step` does more than ``optimizer.step()``; read once the
        precision is bound. ``False`` lets the set-up optimizer step the user's optimizer
        directly. Default: whether this precision replaces :meth:`optimizer_step`."""
        return overrides(self, Precision, "optimizer_step")

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
