"""A strategy whose engine owns the training step, the way DeepSpeed's does.

The engine keeps the model's parameters in the precision's dtype and float32 master copies of
them, steps the optimizer on the masters, scales the loss itself in backward (a static scale for
float16) and can build the optimizer from its own configuration. The user's precision is only
read for its dtype: :meth:`EngineStrategy.connect_precision` replaces it with
:class:`EnginePrecision`, which converts inputs and outputs and nothing else, so no autocast and
no ``GradScaler`` of switchyard's runs. Everything goes through public hooks of
:class:`~switchyard.Strategy`; core has no case for it.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils._pytree import tree_map

from switchyard import Precision
from switchyard.builtin.single_device import SingleDeviceStrategy

OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def _cast_floats(data: Any, dtype: torch.dtype) -> Any:
    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and torch.is_floating_point(x) and x.dtype != dtype:
            return x.to(dtype)
        return x

    return tree_map(cast, data)


class EnginePrecision(Precision):
    """What the runtime sees of the engine's precision: floating-point inputs cast to the
    engine's dtype, outputs back to float32. No autocast and no scaler: the engine casts the
    parameters and scales the loss."""

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


class Engine(nn.Module):
    """The module in the engine's dtype, its float32 master parameters and the optimizer over
    them."""

    def __init__(
        self,
        module: nn.Module,
        dtype: torch.dtype,
        optimizer: Optimizer | None,
        optimizer_config: Mapping[str, Any] | None,
        loss_scale: float,
        step_lr: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.loss_scale = loss_scale
        self.backward_calls = 0
        self.steps = 0
        self._unscaled = False  # this step's gradients were already moved to the masters
        if dtype == torch.float32:
            self.masters = list(module.parameters())
        else:
            # taken before the cast, so the masters keep every bit of the float32 values
            self.masters = [
                p.detach().float().clone().requires_grad_(True) for p in module.parameters()
            ]
        self.module = module.to(dtype)
        params = list(self.module.parameters())
        master_of = {id(p): m for p, m in zip(params, self.masters, strict=True)}
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["params"] = [master_of.get(id(p), p) for p in group["params"]]
        elif optimizer_config is not None:
            config = dict(optimizer_config)
            optimizer = OPTIMIZERS[str(config.pop("type")).lower()](self.masters, **config)
        self.optimizer = optimizer
        self.lr_scheduler: torch.optim.lr_scheduler.StepLR | None = None
        if optimizer_config is not None and step_lr is not None and optimizer is not None:
            self.lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, **step_lr)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.backward_calls += 1
        (loss.float() * self.loss_scale).backward()

    def unscale(self) -> None:
        """Move the gradients onto the masters, in true scale (once per step)."""
        if self._unscaled:
            return
        self._unscaled = True
        for param, master in zip(self.module.parameters(), self.masters, strict=True):
            if param.grad is None:
                continue
            grad = param.grad.float() / self.loss_scale
            if master is param:
                param.grad = grad
            else:
                master.grad = grad
                param.grad = None

    def step(self) -> None:
        if self.optimizer is None:
            raise RuntimeError("this engine was set up without an optimizer")
        self.unscale()
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self._unscaled = False
        self.steps += 1
        with torch.no_grad():
            for param, master in zip(self.module.parameters(), self.masters, strict=True):
                if master is not param:
                    param.copy_(master)


class EngineStrategy(SingleDeviceStrategy):
    """One device, trained by an :class:`Engine`.

    Args:
        optimizer: an optimizer configuration (``{"type": "sgd", "lr": 0.1}``) the engine builds
            when ``runtime.setup(model)`` is given none.
        loss_scale: the engine's static loss scale; default 1024 for float16, else 1.
        step_lr: ``StepLR`` arguments of a scheduler the engine builds and steps beside the
            optimizer of its configuration.
    """

    def __init__(
        self,
        optimizer: Mapping[str, Any] | None = None,
        loss_scale: float | None = None,
        step_lr: Mapping[str, Any] | None = None,
    ) -> None:
        self.optimizer_config = optimizer
        self.loss_scale = loss_scale
        self.step_lr = step_lr
        self.selected_precision: Precision | None = None
        self._engines: weakref.WeakKeyDictionary[Optimizer, Engine] = weakref.WeakKeyDictionary()

    def connect_precision(self, precision: Precision) -> Precision:
        self.selected_precision = precision
        dtype = precision.compute_dtype or precision.param_dtype
        return EnginePrecision(precision.name, dtype)

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module  # the engine casts the parameters itself, at setup

    def _engine(self, module: nn.Module, optimizer: Optimizer | None) -> Engine:
        dtype = self.precision.param_dtype
        scale = self.loss_scale
        if scale is None:
            scale = 1024.0 if dtype == torch.float16 else 1.0
        config = self.optimizer_config if optimizer is None else None
        engine = Engine(module, dtype, optimizer, config, scale, self.step_lr)
        if engine.optimizer is not None:
            self._engines[engine.optimizer] = engine
        return engine

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: Sequence[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        if len(optimizers) > 1:
            raise ValueError("the engine trains one module with one optimizer")
        engine = self._engine(module, optimizers[0] if optimizers else None)
        return engine, [engine.optimizer] if engine.optimizer is not None else []

    def engine_lr_schedulers(self, module: nn.Module) -> list[Any]:
        assert isinstance(module, Engine)
        return [module.lr_scheduler] if module.lr_scheduler is not None else []

    def setup_module(self, module: nn.Module) -> nn.Module:
        return self._engine(module, None)

    def backward(
        self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any
    ) -> None:
        if not isinstance(module, Engine):
            raise TypeError("the engine strategy backpropagates through the module it set up")
        module.backward(tensor)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        self._engines[optimizer].step()

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        engine = self._engines[optimizer]
        engine.unscale()
        masters = [m for m in engine.masters if m.grad is not None]
        return torch.nn.utils.clip_grad_norm_(
            masters, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )
