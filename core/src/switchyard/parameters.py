"""Keeping optimizers pointed at the parameters a module holds, whatever moving it did.

``module.to(device)`` keeps each ``Parameter`` object only where the device's tensors are
"shallow-copy compatible" with the old ones (CPU and CUDA are). Moving to an out-of-tree
PrivateUse1 device or to XLA creates new ``Parameter`` objects, and sharding (FSDP2's
``fully_shard``) replaces every parameter by a ``DTensor`` one; an optimizer created before
``runtime.setup`` would go on stepping the stale tensors while the model trains nothing. The
runtime records each parameter's name before setup and, after every step that may have replaced
parameters, re-points the optimizers by name, for every accelerator and strategy alike.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer


class ParameterNames:
    """The parameters of a module as they were when recorded, by name, so that an optimizer
    created from them can be re-pointed at whatever the module holds under those names later.

    Parameters are held weakly: recording keeps nothing alive, and a parameter that was freed
    (and whose ``id`` another tensor may now have) is never mistaken for a recorded one.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)
        self._names: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}
        self.record(module)

    def record(self, module: nn.Module) -> None:
        """Add the parameters ``module`` holds now, keeping those recorded before: after a move
        and then a sharding, an optimizer holding either generation can be re-pointed."""
        # remove_duplicate=False: a tied parameter answers to its first name, and the module
        # still holds it under that name after a move
        for name, parameter in module.named_parameters(remove_duplicate=False):
            self._names.setdefault(id(parameter), (weakref.ref(parameter), name))

    @property
    def module(self) -> nn.Module | None:
        """The module the names belong to, while it is alive."""
        return self._module()

    def name_of(self, parameter: torch.Tensor) -> str | None:
        """The name ``parameter`` had in the module when recorded, or ``None``."""
        entry = self._names.get(id(parameter))
        if entry is None or entry[0]() is not parameter:
            return None
        return entry[1]

    def owns(self, optimizer: Optimizer) -> bool:
        """Whether any of the optimizer's parameters is one recorded here or one the module
        holds now."""
        module = self._module()
        current = {id(p) for p in module.parameters()} if module is not None else set()
        return any(id(p) in current or self.name_of(p) is not None for p in _parameters(optimizer))

    def repoint(self, optimizer: Optimizer, module: nn.Module | None = None) -> int:
        """Replace, in the optimizer's parameter groups, every recorded parameter that the
        module no longer holds by the parameter it holds under the same name; optimizer state
        already created moves with it (to the new parameter's device and dtype, by
        ``Optimizer.load_state_dict``'s own rules). Parameters that are not the module's are
        left alone. Returns how many were replaced."""
        module = module if module is not None else self._module()
        if module is None:
            return 0
        held = dict(module.named_parameters(remove_duplicate=False))
        held_ids = {id(p) for p in held.values()}
        replacements: dict[int, torch.Tensor] = {}
        for parameter in _parameters(optimizer):
            if id(parameter) in held_ids:
                continue
            name = self.name_of(parameter)
            if name is not None and name in held:
                replacements[id(parameter)] = held[name]
        if not replacements:
            return 0
        # state_dict() numbers parameters by position, so it survives the swap; loading it
        # back keys the state by the new parameters and casts it as torch does on resume
        saved = optimizer.state_dict() if optimizer.state else None
        for group in optimizer.param_groups:
            group["params"] = [replacements.get(id(p), p) for p in group["params"]]
        if saved is not None:
            optimizer.state.clear()
            optimizer.load_state_dict(saved)
        return len(replacements)


def _parameters(optimizer: Optimizer) -> Iterable[torch.Tensor]:
    for group in optimizer.param_groups:
        yield from group["params"]
