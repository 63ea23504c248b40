"""FSDPStrategy's checkpoints: the sharded-directory format and its metadata file, sharded save
and load, and the conversions between sharded and full state dicts (optimizer state keyed by
parameter name, as ``torch.distributed.checkpoint`` has it, or by index, as
``Optimizer.state_dict()`` has it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal

from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from switchyard.checkpoint import atomic_save, load_file, replace_directory
from switchyard.errors import CheckpointError
from switchyard.strategy import Strategy

StateDictType = Literal["sharded", "full"]

META_FILENAME = "meta.pt"
"""In a sharded checkpoint directory: the entries of ``state`` that are not modules or
optimizers (step counters, scheduler states), written by global rank zero with ``torch.save``."""

_FORMAT = "switchyard-fsdp-sharded"


def check_state_dict_type(value: str) -> StateDictType:
    """``value`` if it is a :data:`StateDictType`; ``ValueError`` otherwise."""
    if value not in ("sharded", "full"):
        raise ValueError(f"state_dict_type={value!r} must be 'sharded' or 'full'")
    return value  # type: ignore[return-value]


# -- state dicts --------------------------------------------------------------------------


def full_module_state_dict(module: nn.Module) -> dict[str, Any]:
    """The consolidated state dict (plain CPU tensors) of a sharded module on global rank zero,
    ``{}`` on the others. Every process must call it: the tensors are all-gathered."""
    return get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_module_state(module: nn.Module, state_dict: Mapping[str, Any], strict: bool) -> None:
    """Load sharded (``DTensor``) or full (plain tensor) values into the sharded module."""
    set_model_state_dict(
        module,
        dict(state_dict),
        options=StateDictOptions(full_state_dict=not is_sharded(state_dict), strict=strict),
    )


def full_optimizer_state_dict(module: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
    """The consolidated optimizer state (plain CPU tensors) keyed by parameter index, as
    ``Optimizer.state_dict()`` has it, on global rank zero; every process must call it."""
    state = get_optimizer_state_dict(
        module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return names_to_index(state) if state else state


def load_optimizer_state(
    module: nn.Module, optimizer: Optimizer, state_dict: Mapping[str, Any]
) -> None:
    """Load sharded or full optimizer state, keyed by parameter name or by parameter index,
    into the optimizer of the sharded ``module``."""
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


def keyed_by_index(state_dict: Mapping[str, Any]) -> bool:
    """Whether an optimizer state dict names its parameters by index."""
    groups = state_dict.get("param_groups") or []
    return any(isinstance(p, int) for g in groups for p in g.get("params", []))


def names_to_index(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter name, as ``Optimizer.state_dict()`` writes
    it: parameters numbered in group order."""
    index: dict[str, int] = {}
    groups = []
    for group in state_dict["param_groups"]:
        ids = []
        for name in group["params"]:
            index.setdefault(name, len(index))
            ids.append(index[name])
        groups.append({**group, "params": ids})
    state = {index[name]: value for name, value in state_dict["state"].items()}
    return {"state": state, "param_groups": groups}


def index_to_names(
    module: nn.Module, optimizer: Optimizer, state_dict: Mapping[str, Any]
) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter index, re-keyed by the names of the
    optimizer's parameters in the sharded ``module``, group by group."""
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


# -- the sharded directory ----------------------------------------------------------------


def write_meta(directory: Path, sharded: Iterable[str], plain: Mapping[str, Any]) -> None:
    """Write :data:`META_FILENAME` into ``directory``: the keys of the sharded entries and the
    plain ones' values."""
    meta = {"format": _FORMAT, "version": 1, "sharded": sorted(sharded), "state": dict(plain)}
    atomic_save(meta, directory / META_FILENAME)


def read_meta(directory: Path, weights_only: bool) -> tuple[list[str], dict[str, Any]]:
    """The keys of the sharded entries and the plain entries of the sharded checkpoint
    ``directory``; ``CheckpointError`` if it is not one."""
    meta_file = directory / META_FILENAME
    if not meta_file.is_file():
        raise CheckpointError(
            f"{str(directory)!r} is a directory without {META_FILENAME}, so not a sharded "
            f"checkpoint written by FSDPStrategy. It holds: "
            f"{', '.join(sorted(p.name for p in directory.iterdir())[:10]) or 'nothing'}"
        )
    meta = load_file(meta_file, weights_only=weights_only)
    if meta.get("format") != _FORMAT:
        raise CheckpointError(f"{str(meta_file)!r} is not a {_FORMAT} metadata file")
    return list(meta["sharded"]), dict(meta["state"])


def save_sharded(
    strategy: Strategy, path: Path, sharded: dict[str, Any], plain: Mapping[str, Any]
) -> None:
    """Write the directory ``path``: the state dicts in ``sharded`` (every process its shards)
    with ``torch.distributed.checkpoint``, and ``plain`` in the metadata file (rank zero). It is
    written under a temporary sibling name and renamed into place by rank zero after every
    process finished, so ``path`` only ever names a complete checkpoint. Every process must
    call it."""
    if path.exists() and not path.is_dir():
        raise CheckpointError(
            f"cannot save a sharded checkpoint to {str(path)!r}: it is a file; sharded "
            "checkpoints are directories (pass another path, or state_dict_type='full')"
        )
    # a sibling, so that the final rename stays within one file system; rank zero names it
    token = strategy.broadcast(uuid.uuid4().hex[:12] if strategy.is_global_zero else None)
    temporary = path.with_name(f".{path.name}.tmp-{token}")
    if strategy.is_global_zero:
        temporary.mkdir(parents=True)
    strategy.barrier("save_checkpoint")
    if sharded:
        dcp_save(sharded, checkpoint_id=temporary)
    if strategy.is_global_zero:
        write_meta(temporary, sharded, plain)
    # every shard is written before the checkpoint takes its final name
    strategy.barrier("save_checkpoint")
    if strategy.is_global_zero:
        replace_directory(temporary, path)
    strategy.barrier("save_checkpoint")


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
    ``module_of`` returns) from their shards, other objects from the metadata file. Returns the
    entries ``state`` did not ask for. Every process must call it."""
    sharded_keys, plain = read_meta(path, weights_only)
    missing = [key for key in state if key not in sharded_keys and key not in plain]
    if missing and strict:
        raise KeyError(
            f"the checkpoint has no entry {missing[0]!r}; it holds "
            f"{sorted([*sharded_keys, *plain])}. Pass strict=False to load what is there."
        )
    template: dict[str, Any] = {}
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
        else:
            raise CheckpointError(
                f"checkpoint entry {key!r} holds a sharded module or optimizer, but "
                f"state[{key!r}] is a {type(obj).__name__}"
            )
    if template:
        dcp_load(
            template,
            checkpoint_id=path,
            planner=DefaultLoadPlanner(allow_partial_load=not strict),
        )
    for key, value in template.items():
        obj = state[key]
        if isinstance(obj, nn.Module):
            set_model_state_dict(obj, value, options=StateDictOptions(strict=strict))
        else:
            set_optimizer_state_dict(module_of(obj), obj, value)
    for key, obj in state.items():
        if key not in plain:
            continue
        if hasattr(obj, "load_state_dict") and callable(obj.load_state_dict):
            obj.load_state_dict(plain[key])
        elif isinstance(state, MutableMapping):
            state[key] = plain[key]
    remainder = {key: value for key, value in plain.items() if key not in state}
    unrequested = {key for key in sharded_keys if key not in state}
    if unrequested:
        # not asked for, so there is no module to shard them into: full tensors, read by
        # every process
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

        remainder.update(_load_state_dict_from_keys(unrequested, checkpoint_id=path))
    return remainder
