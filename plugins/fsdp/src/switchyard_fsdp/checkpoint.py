"""FSDPStrategy's checkpoints: sharded load into sharded modules, and the conversions between
sharded and full state dicts (optimizer state keyed by parameter name, as
``torch.distributed.checkpoint`` has it, or by index, as ``Optimizer.state_dict()`` has it).

The sharded-directory format, its safe reading and its writing are core's
(:mod:`switchyard.sharded`), so that any process reads these checkpoints without this plugin:
``switchyard.checkpoint.load`` and ``switchyard consolidate``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal

from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from switchyard import sharded as core_sharded
from switchyard.checkpoint import sharded_tensor_entries
from switchyard.errors import CheckpointError
from switchyard.sharded import META_FILENAME, names_to_index, read_meta, save_sharded
from switchyard.strategy import Strategy

# torch.distributed.checkpoint.state_dict is imported by the functions that use it: about 80
# modules and 3 MiB per process that training without a state dict never needs (raw
# fully_shard does not import it either)

__all__ = [
    "META_FILENAME",
    "StateDictType",
    "check_state_dict_type",
    "full_module_state_dict",
    "full_optimizer_state_dict",
    "gather_full",
    "holds_sharded_tensors",
    "index_to_names",
    "is_sharded",
    "keyed_by_index",
    "load_module_state",
    "load_optimizer_state",
    "load_sharded",
    "names_to_index",
    "read_meta",
    "save_sharded",
]

StateDictType = Literal["sharded", "full"]


def check_state_dict_type(value: str) -> StateDictType:
    """``value`` if it is a :data:`StateDictType`; ``ValueError`` otherwise."""
    if value not in ("sharded", "full"):
        raise ValueError(f"state_dict_type={value!r} must be 'sharded' or 'full'")
    return value  # type: ignore[return-value]


# -- state dicts --------------------------------------------------------------------------


def full_module_state_dict(module: nn.Module) -> dict[str, Any]:
    """The consolidated state dict (plain CPU tensors) of a sharded module on global rank zero,
    ``{}`` on the others. Every process must call it: the tensors are all-gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_module_state(module: nn.Module, state_dict: Mapping[str, Any], strict: bool) -> None:
    """Load sharded (``DTensor``) or full (plain tensor) values into the sharded module."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(
        module,
        dict(state_dict),
        options=StateDictOptions(full_state_dict=not is_sharded(state_dict), strict=strict),
    )


def full_optimizer_state_dict(module: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
    """The consolidated optimizer state (plain CPU tensors) keyed by parameter index, as
    ``Optimizer.state_dict()`` has it, on global rank zero; every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(
        module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return names_to_index(state) if state else state


def load_optimizer_state(
    module: nn.Module, optimizer: Optimizer, state_dict: Mapping[str, Any]
) -> None:
    """Load sharded or full optimizer state, keyed by parameter name or by parameter index,
    into the optimizer of the sharded ``module``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state_dict = dict(state_dict)
    if keyed_by_index(state_dict):
        state_dict = index_to_names(module, optimizer, state_dict)
    set_optimizer_state_dict(
        module,
        optimizer,
        state_dict,
        options=StateDictOptions(full_state_dict=not is_sharded(state_dict)),
    )


def is_sharded(state_dict: Mapping[str, Any]) -> bool:
    """Whether a (model or optimizer) state dict holds DTensor shards."""
    stack: list[Any] = [state_dict]
    while stack:
        value = stack.pop()
        if isinstance(value, DTensor):
            return True
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return False


def holds_sharded_tensors(value: Any) -> bool:
    """Whether ``value`` holds a sharded tensor (``DTensor``, ``ShardedTensor``) anywhere."""
    return bool(sharded_tensor_entries(value))


def gather_full(value: Any) -> Any:
    """``value`` with every ``DTensor`` in it (nested dicts, lists, tuples) replaced by the full
    tensor on the CPU. Every process must call it with the same structure: each ``DTensor`` is
    all-gathered."""
    if isinstance(value, DTensor):
        return value.full_tensor().cpu()
    if isinstance(value, dict):
        return {k: gather_full(v) for k, v in value.items()}
    if isinstance(value, list):
        return [gather_full(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(gather_full(v) for v in value)
    return value


def keyed_by_index(state_dict: Mapping[str, Any]) -> bool:
    """Whether an optimizer state dict names its parameters by index."""
    groups = state_dict.get("param_groups") or []
    return any(isinstance(p, int) for g in groups for p in g.get("params", []))


def index_to_names(
    module: nn.Module, optimizer: Optimizer, state_dict: Mapping[str, Any]
) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter index, re-keyed by the names of the
    optimizer's parameters in the sharded ``module``, group by group."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    # the names of the optimizer's parameters, group by group, as DCP writes them
    named: list[dict[str, Any]] = get_optimizer_state_dict(module, optimizer)["param_groups"]  # type: ignore[assignment]
    loaded = state_dict.get("param_groups", [])
    if len(loaded) != len(named) or any(
        len(a["params"]) != len(b["params"]) for a, b in zip(loaded, named, strict=True)
    ):
        raise CheckpointError(
            "the optimizer state does not match the optimizer: it has parameter groups of "
            f"sizes {[len(g['params']) for g in loaded]}, the optimizer "
            f"{[len(g['params']) for g in named]}"
        )
    mapping: dict[Any, str] = {}
    groups = []
    for saved, names in zip(loaded, named, strict=True):
        mapping.update(zip(saved["params"], names["params"], strict=True))
        groups.append({**saved, "params": list(names["params"])})
    state = {mapping[index]: value for index, value in state_dict.get("state", {}).items()}
    return {"state": state, "param_groups": groups}


# -- the sharded directory (the format and its safe reading are core's: switchyard.sharded) --


def load_sharded(
    strategy: Strategy,
    path: Path,
    state: Mapping[str, Any],
    strict: bool,
    weights_only: bool,
    module_of: Callable[[Optimizer], nn.Module],
) -> dict[str, Any]:
    """Restore ``state`` from the sharded checkpoint directory ``path``, into any number of
    processes (DCP reshards): modules and optimizers (addressed through the sharded module
    ``module_of`` returns) from their shards, dicts of sharded tensors in place, other objects
    from the metadata file. Returns the entries ``state`` did not ask for. Every file is read
    safely unless ``weights_only=False`` (:mod:`switchyard.sharded`). Every process must call
    it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    sharded_keys, plain = read_meta(path, weights_only)
    missing = [key for key in state if key not in sharded_keys and key not in plain]
    if missing and strict:
        raise KeyError(
            f"the checkpoint has no entry {missing[0]!r}; it holds "
            f"{sorted([*sharded_keys, *plain])}. Pass strict=False to load what is there."
        )
    template: dict[str, Any] = {}
    as_full: list[str] = []
    for key, obj in state.items():
        if key not in sharded_keys:
            if isinstance(obj, (nn.Module, Optimizer)) and key in plain:
                raise CheckpointError(
                    f"checkpoint entry {key!r} was saved as a plain value, but "
                    f"state[{key!r}] is a {type(obj).__name__}"
                )
            continue
        if isinstance(obj, nn.Module):
            template[key] = strategy.module_state_dict(obj)
        elif isinstance(obj, Optimizer):
            template[key] = strategy.optimizer_state_dict(obj)
        elif isinstance(obj, dict) and holds_sharded_tensors(obj):
            template[key] = obj  # DTensors (a model.state_dict()) are filled in place
        elif hasattr(obj, "load_state_dict") and callable(obj.load_state_dict):
            template[key] = obj.state_dict()
        else:
            as_full.append(key)  # nothing to shard into: full tensors
    if template:
        core_sharded.load_into(template, path, weights_only=weights_only, strict=strict)
    for key, value in template.items():
        obj = state[key]
        if isinstance(obj, nn.Module):
            set_model_state_dict(obj, value, options=StateDictOptions(strict=strict))
        elif isinstance(obj, Optimizer):
            set_optimizer_state_dict(module_of(obj), obj, value)
        elif value is not obj:
            obj.load_state_dict(value)
    if as_full and isinstance(state, MutableMapping):
        full = core_sharded.read_full(path, as_full, weights_only=weights_only)
        for key in as_full:
            state[key] = full.get(key)
    for key, obj in state.items():
        if key not in plain:
            continue
        if hasattr(obj, "load_state_dict") and callable(obj.load_state_dict):
            obj.load_state_dict(plain[key])
        elif isinstance(state, MutableMapping):
            state[key] = plain[key]
    remainder = {key: value for key, value in plain.items() if key not in state}
    unrequested = [key for key in sharded_keys if key not in state]
    if unrequested:
        # not asked for, so there is no module to shard them into: full tensors, read by
        # every process on its own
        full = core_sharded.read_full(path, unrequested, weights_only=weights_only)
        remainder.update({key: full[key] for key in unrequested if key in full})
    return remainder
