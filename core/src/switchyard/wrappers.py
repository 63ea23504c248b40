"""What ``Runtime.setup*`` hands back: thin wrappers around the user's module, optimizer and loader.

They exist to route the few calls that need the strategy or precision (forward under autocast,
``optimizer.step`` through a gradient scaler, batches onto the device) and nothing more: every
other attribute reaches the user's own object, and no per-step work happens that the chosen
configuration does not need. What a step needs is decided once, at setup (``Precision.wraps_*``
and whether the strategy replaces a step method), not asked again on every call.
"""

from __future__ import annotations

import collections
import functools
import sys
import types
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _nn_module
from torch.optim import Optimizer
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from torch.utils.hooks import RemovableHandle

from switchyard.precision import Precision, overrides
from switchyard.strategy import Strategy

# nn.Module.__call__ runs these for every module, the wrapper included; the direct call below is
# taken only while all are empty. torch mutates them in place and never rebinds them.
_global_forward_pre_hooks = _nn_module._global_forward_pre_hooks
_global_forward_hooks = _nn_module._global_forward_hooks
_global_backward_pre_hooks = _nn_module._global_backward_pre_hooks
_global_backward_hooks = _nn_module._global_backward_hooks
_tracing = torch._C._get_tracing_state

_call_module = nn.Module.__call__

# nn.Module's own bookkeeping (hook tables, the compiled call): the wrapper's, never forwarded to
# the user's module, which would otherwise run the wrapper's compiled call or hooks as its own
_MODULE_STATE = (frozenset(vars(nn.Module())) | {"_compiled_call_impl"}) - {"training"}


def move_to_device(data: Any, device: torch.device) -> Any:
    """Move every tensor in a nested structure (lists, tuples, dicts) to ``device``.

    Tensors already there are returned as they are. A tensor, and plain tuples, lists and dicts,
    are handled without ``torch.utils._pytree`` (whose walk costs more than the copy of a small
    batch); any other structure goes through ``tree_map``, with the same result.
    """
    non_blocking = device.type != "cpu"

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x if x.device == device else x.to(device, non_blocking=non_blocking)
        kind = type(x)
        if kind is tuple or kind is list:
            return kind(move(item) for item in x)
        if kind is dict:
            return {key: move(value) for key, value in x.items()}
        return tree_map(leaf, x)

    def leaf(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.device != device:
            return x.to(device, non_blocking=non_blocking)
        return x

    return move(data)


class RuntimeModule(nn.Module):
    """The user's module as set up by the strategy (moved, maybe wrapped in DDP or sharded).

    Calling it runs the strategy's module under the precision's forward context. Attributes and
    methods that the wrapper does not have are looked up on the original module, so
    ``model.my_method()`` and ``model.layer`` work as before. :attr:`module` is the original.

    When the precision does no forward work, calling the wrapper calls the strategy's module
    directly; ``nn.Module.__call__``'s machinery runs for the wrapper only when something needs
    it: hooks registered on the wrapper or globally, ``model.compile()``, ``torch.jit.trace``.
    """

    def __init__(
        self, forward_module: nn.Module, precision: Precision, original_module: nn.Module
    ) -> None:
        super().__init__()
        self._forward_module = forward_module
        self._precision = precision
        wraps = precision.wraps_forward
        # plain attributes, found without nn.Module.__getattr__'s search: read on every step.
        # The precision's methods are bound once; a conversion the precision leaves at the
        # default (identity) is not called at all
        self.__dict__["_wraps_forward"] = wraps
        self.__dict__["_convert_input"] = (
            precision.convert_input
            if wraps and overrides(precision, Precision, "convert_input")
            else None
        )
        self.__dict__["_convert_output"] = (
            precision.convert_output
            if wraps and overrides(precision, Precision, "convert_output")
            else None
        )
        self.__dict__["_forward_context"] = precision.forward_context
        # not registered as a submodule: it is already inside _forward_module
        self.__dict__["_original_module"] = original_module
        self.__dict__["_inner"] = forward_module
        self.__dict__["_direct"] = True
        self.__dict__["_initialized"] = True

    @property
    def module(self) -> nn.Module:
        """The module the user passed to ``setup``."""
        return self.__dict__["_original_module"]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # nn.Module.__call__ is two more frames and a dozen checks before it reaches forward;
        # skip it while it would do nothing but call forward. '_direct' is cleared by whatever
        # gives the wrapper a hook or a compiled call (see _needs_call_machinery), and
        # re-established by the next call through the machinery once they are gone
        if self._direct and not (
            _global_forward_pre_hooks
            or _global_forward_hooks
            or _global_backward_pre_hooks
            or _global_backward_hooks
            or _tracing()
        ):
            if not self._wraps_forward:
                return self._inner(*args, **kwargs)
            return self.forward(*args, **kwargs)
        self.__dict__["_direct"] = not self._needs_call_machinery()
        return _call_module(self, *args, **kwargs)

    def _needs_call_machinery(self) -> bool:
        """Whether nn.Module.__call__ has work to do for the wrapper itself (hooks registered on
        it, ``model.compile()``), besides the global hooks checked on every call."""
        return bool(
            self._forward_pre_hooks
            or self._forward_hooks
            or self._backward_pre_hooks
            or self._backward_hooks
            or self._compiled_call_impl is not None
        )

    def register_forward_pre_hook(self, *args: Any, **kwargs: Any) -> RemovableHandle:
        """``nn.Module.register_forward_pre_hook`` on the wrapper; calls then go through
        ``nn.Module.__call__`` so that the hook runs."""
        self.__dict__["_direct"] = False
        return super().register_forward_pre_hook(*args, **kwargs)

    def register_forward_hook(self, *args: Any, **kwargs: Any) -> RemovableHandle:
        """``nn.Module.register_forward_hook`` on the wrapper; calls then go through
        ``nn.Module.__call__`` so that the hook runs."""
        self.__dict__["_direct"] = False
        return super().register_forward_hook(*args, **kwargs)

    def register_full_backward_pre_hook(self, *args: Any, **kwargs: Any) -> RemovableHandle:
        """``nn.Module.register_full_backward_pre_hook`` on the wrapper; calls then go through
        ``nn.Module.__call__`` so that the hook runs."""
        self.__dict__["_direct"] = False
        return super().register_full_backward_pre_hook(*args, **kwargs)

    def register_full_backward_hook(self, *args: Any, **kwargs: Any) -> RemovableHandle:
        """``nn.Module.register_full_backward_hook`` on the wrapper; calls then go through
        ``nn.Module.__call__`` so that the hook runs."""
        self.__dict__["_direct"] = False
        return super().register_full_backward_hook(*args, **kwargs)

    def register_backward_hook(self, *args: Any, **kwargs: Any) -> RemovableHandle:
        """``nn.Module.register_backward_hook`` on the wrapper; calls then go through
        ``nn.Module.__call__`` so that the hook runs."""
        self.__dict__["_direct"] = False
        return super().register_backward_hook(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The strategy's module called under the precision's forward context (autocast), with
        the inputs and outputs converted as the precision says."""
        if not self._wraps_forward:
            return self._inner(*args, **kwargs)
        convert_input = self._convert_input
        if convert_input is not None:
            args, kwargs = convert_input((args, kwargs))
        with self._forward_context():
            output = self._inner(*args, **kwargs)
        convert_output = self._convert_output
        return output if convert_output is None else convert_output(output)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The user's module's ``state_dict``: its keys carry no wrapper prefix.

        Under a strategy that shards (FSDP), its values are this process's shards: a script's
        own ``torch.save(model.state_dict(), path)`` would write a fraction of the model, so
        pickling it through ``torch.save`` warns (it is saved as a plain dict all the same).
        ``runtime.save(path, {"model": model})``, or of this state dict, writes every shard."""
        state = self.module.state_dict(*args, **kwargs)
        if isinstance(state, dict) and state:
            from switchyard.checkpoint import sharded_tensor_entries

            if sharded_tensor_entries(state):
                sharded = ShardedStateDict(state)
                sharded.__dict__.update(getattr(state, "__dict__", {}))  # _metadata
                return sharded
        return state

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """The user's module's ``load_state_dict`` (keys without a wrapper prefix)."""
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> RuntimeModule:
        """``nn.Module.train``: the mode of the wrapper, the user's module and the strategy's."""
        # what nn.Module.train does here (the flag through __setattr__, which also sets it on
        # the original module, then the children: the strategy's module), without the
        # generic __setattr__
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.__dict__["_original_module"].training = mode
        self.__dict__["training"] = mode
        for child in self.children():
            child.train(mode)
        return self

    def __getattr__(self, name: str) -> Any:
        # nn.Module.__getattr__ first (the wrapper's own parameters, buffers, submodules), but
        # without raising and catching its AttributeError on every forwarded lookup
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            found = d.get(store)
            if found is not None and name in found:
                return found[name]
        original = d.get("_original_module")
        if original is None:
            return super().__getattr__(name)
        return getattr(original, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # after setup, attributes the wrapper does not have are the user's module's: setting
        # model.temperature must change what the user's forward reads, not shadow it here
        if not self.__dict__.get("_initialized", False):
            super().__setattr__(name, value)
            return
        if name in _MODULE_STATE:
            # e.g. _compiled_call_impl, set by model.compile(): the call machinery is needed
            self.__dict__["_direct"] = False
            super().__setattr__(name, value)
            return
        original = self.__dict__["_original_module"]
        ours = self._has_own(name)
        if hasattr(original, name) or not ours:
            setattr(original, name, value)
        if ours:
            super().__setattr__(name, value)

    def _has_own(self, name: str) -> bool:
        """``name in dir(self)``, without building and sorting dir()'s list."""
        if name[:1].isdigit():  # dir() leaves such names out
            return False
        d = self.__dict__
        if name in d or any(name in d[store] for store in ("_parameters", "_buffers", "_modules")):
            return True
        return any(name in vars(cls) for cls in type(self).__mro__)


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
        # neither the strategy nor the precision does anything around the step: step the
        # user's optimizer directly (looked up on every call, as the strategy would)
        self._direct_step = not (
            overrides(strategy, Strategy, "optimizer_step")
            or strategy.precision.wraps_optimizer_step
        )
        if overrides(strategy, Strategy, "optimizer_zero_grad"):
            # an instance attribute before the class's: the user's optimizer's own zero_grad
            # otherwise, with nothing in between
            self.zero_grad = functools.partial(strategy.optimizer_zero_grad, optimizer)
            """``optimizer.zero_grad()`` through :meth:`Strategy.optimizer_zero_grad`, which
            the strategy overrides (without it, the user's optimizer's own)."""

    @property
    def optimizer(self) -> Optimizer:
        """The optimizer the user passed to ``setup``."""
        return self._optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The user's optimizer's parameter groups (read and set through to it)."""
        return self._optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._optimizer.param_groups = value

    @property
    def state(self) -> Any:
        """The user's optimizer's per-parameter state (read and set through to it)."""
        return self._optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self._optimizer.state = value

    def step(self, closure: Any = None) -> Any:
        """One optimizer step through the strategy (and so the precision's gradient scaler),
        or the user's optimizer's own ``step`` when neither does anything around it."""
        if self._direct_step:
            if closure is None:
                return self._optimizer.step()
            return self._optimizer.step(closure=closure)
        kwargs = {} if closure is None else {"closure": closure}
        return self._strategy.optimizer_step(self._optimizer, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state as the strategy saves it (full, or this process's shard)."""
        return self._strategy.optimizer_state_dict(self._optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state written by :meth:`state_dict`, through the strategy."""
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
        """The data loader the user passed to ``setup_dataloaders`` (with a distributed sampler
        where the strategy added one)."""
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
            # the loader's own iterator: no generator frame between it and the loop
            return iter(self._dataloader)
        return self._moved(self._device)

    def _moved(self, device: torch.device) -> Iterator[Any]:
        for batch in self._dataloader:
            yield move_to_device(batch, device)

    def __getattr__(self, name: str) -> Any:
        if name == "_dataloader":
            raise AttributeError(name)
        return getattr(self._dataloader, name)


class ShardedStateDict(collections.OrderedDict[str, Any]):
    """A set-up module's state dict holding this process's shards (``DTensor`` values), as
    ``model.state_dict()`` returns it under FSDP. It is the ``OrderedDict`` that
    ``nn.Module.state_dict`` returns in every way except that ``torch.save`` of it warns, once
    per process: the file would hold part of the model. Pickled, it is a plain ``OrderedDict``
    (its ``_metadata`` kept), so such a file still loads with ``weights_only=True``."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        global _warned_sharded_save
        if not _warned_sharded_save and _inside_torch_save():
            _warned_sharded_save = True
            warnings.warn(
                "torch.save of model.state_dict() under a strategy that shards writes this "
                "process's shards only, part of the model. Save with runtime.save(path, "
                "{'model': model}) (every process calls it), which writes every shard",
                UserWarning,
                stacklevel=2,
            )
        return (collections.OrderedDict, (), self.__dict__ or None, None, iter(self.items()))


_warned_sharded_save = False


def _inside_torch_save() -> bool:
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "torch.serialization":
            return True
        frame = frame.f_back
    return False
