"""What ``Runtime.setup*`` hands back: thin wrappers around the user's module, optimizer and loader.

They exist to route the few calls that need the strategy or precision (forward under autocast,
``optimizer.step`` through a gradient scaler, batches onto the device) and nothing more: every
other attribute reaches the user's own object, and no per-step work happens that the chosen
configuration does not need.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from switchyard.precision import Precision
from switchyard.strategy import Strategy


def move_to_device(data: Any, device: torch.device) -> Any:
    """Move every tensor in a nested structure (lists, tuples, dicts) to ``device``."""

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.device != device:
            return x.to(device, non_blocking=device.type != "cpu")
        return x

    return tree_map(move, data)


class RuntimeModule(nn.Module):
    """The user's module as set up by the strategy (moved, maybe wrapped in DDP or sharded).

    Calling it runs the strategy's module under the precision's forward context. Attributes and
    methods that the wrapper does not have are looked up on the original module, so
    ``model.my_method()`` and ``model.layer`` work as before. :attr:`module` is the original.
    """

    def __init__(
        self, forward_module: nn.Module, precision: Precision, original_module: nn.Module
    ) -> None:
        super().__init__()
        self._forward_module = forward_module
        self._precision = precision
        self._wraps_forward = precision.wraps_forward
        # not registered as a submodule: it is already inside _forward_module
        self.__dict__["_original_module"] = original_module
        # a plain attribute, found without nn.Module.__getattr__'s search: read on every step
        self.__dict__["_inner"] = forward_module
        self.__dict__["_initialized"] = True

    @property
    def module(self) -> nn.Module:
        """The module the user passed to ``setup``."""
        return self.__dict__["_original_module"]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._wraps_forward:
            return self._inner(*args, **kwargs)
        precision = self._precision
        args, kwargs = precision.convert_input((args, kwargs))
        with precision.forward_context():
            output = self._inner(*args, **kwargs)
        return precision.convert_output(output)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original_module")
            if original is None:
                raise
            return getattr(original, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # after setup, attributes the wrapper does not have are the user's module's: setting
        # model.temperature must change what the user's forward reads, not shadow it here
        if not self.__dict__.get("_initialized", False):
            super().__setattr__(name, value)
            return
        original = self.__dict__["_original_module"]
        ours = name in dir(self)
        if hasattr(original, name) or not ours:
            setattr(original, name, value)
        if ours:
            super().__setattr__(name, value)


class RuntimeOptimizer:
    """The user's optimizer, stepping through the strategy (and so the precision's scaler).

    It is an instance of the user's optimizer class too (``isinstance(opt, torch.optim.AdamW)``
    holds, learning-rate schedulers accept it), sharing its parameter groups and state.
    """

    def __init__(self, optimizer: Optimizer, strategy: Strategy) -> None:
        # share the optimizer's state objects rather than copy them; 'step' and 'state_dict'
        # must resolve to ours. 'param_groups' and 'state' are properties reading the user's
        # optimizer: its load_state_dict replaces both objects, and a copy would go stale
        self.__dict__ = {
            k: v
            for k, v in optimizer.__dict__.items()
            if k not in ("state_dict", "step", "__del__", "param_groups", "state")
        }
        self.__class__ = type(
            f"Runtime{type(optimizer).__name__}", (RuntimeOptimizer, type(optimizer)), {}
        )
        self._optimizer = optimizer
        self._strategy = strategy

    @property
    def optimizer(self) -> Optimizer:
        """The optimizer the user passed to ``setup``."""
        return self._optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self._optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self._optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self._optimizer.state = value

    def step(self, closure: Any = None) -> Any:
        kwargs = {} if closure is None else {"closure": closure}
        return self._strategy.optimizer_step(self._optimizer, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self._strategy.optimizer_state_dict(self._optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._strategy.load_optimizer_state_dict(self._optimizer, state_dict)


class RuntimeDataLoader:
    """The user's data loader, yielding batches on the runtime's device.

    On CPU the batches are already where they belong, so nothing is done per batch. With a
    ``DistributedSampler`` the epoch advances on every new iteration, so each epoch shuffles
    differently and every process agrees on the order.
    """

    def __init__(self, dataloader: DataLoader[Any], device: torch.device | None) -> None:
        self._dataloader = dataloader
        self._device = device if device is not None and device.type != "cpu" else None
        self._num_iter_calls = 0

    @property
    def dataloader(self) -> DataLoader[Any]:
        return self._dataloader

    @property
    def device(self) -> torch.device | None:
        """Where batches are moved, or ``None`` when they are left where the loader makes them."""
        return self._device

    def __len__(self) -> int:
        return len(self._dataloader)

    def __iter__(self) -> Iterator[Any]:
        sampler = getattr(self._dataloader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self._num_iter_calls)
        self._num_iter_calls += 1
        if self._device is None:
            yield from self._dataloader
            return
        device = self._device
        for batch in self._dataloader:
            yield move_to_device(batch, device)

    def __getattr__(self, name: str) -> Any:
        if name == "_dataloader":
            raise AttributeError(name)
        return getattr(self._dataloader, name)
