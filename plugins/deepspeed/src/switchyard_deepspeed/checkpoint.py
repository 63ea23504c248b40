"""DeepSpeedStrategy's checkpoints: DeepSpeed's own format, published and read as core's are.

A checkpoint is a directory::

    path/
      switchyard-deepspeed.json   what is where (JSON: read without unpickling anything)
      state.pt                    the entries that are no engine's (a step counter, a
                                  scheduler's state dict), written by rank zero (torch.save)
      engine0/                    engine.save_checkpoint(path, tag="engine0") of the first
                                  engine: its module (and, under ZeRO-3, each process's
                                  parameter shards) and each process's optimizer-state shards
      zero_to_fp32.py             DeepSpeed's own consolidation script, as it copies it

Writing: every process writes into a staged sibling directory
(:class:`switchyard.checkpoint.StagedDirectory`), which rank zero renames into place once all
are done (:func:`switchyard.checkpoint.replace_directory`): ``path`` only ever names a
complete checkpoint, and a save that fails on any process fails on all and leaves the previous
checkpoint as it was.

Reading: DeepSpeed reads its files with ``torch.load(weights_only=False)``, which would run
any code a crafted file names. Under ``weights_only=True`` (the default) every file is first
scanned without running it (:func:`switchyard.checkpoint.inspect_pickle`) and refused if it
names a global outside torch's safe set and the few DeepSpeed data classes its checkpoints
hold (:data:`SAFE_GLOBALS`); DeepSpeed's own loads then run with
``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, which makes every ``torch.load`` inside it use the safe
unpickler with that allow-list.

Consolidating: :func:`load_full` / :func:`consolidate` merge the float32 master weights of every
process's shards (DeepSpeed's ``zero_to_fp32``, under the same safe loading) into one plain
state dict, in one process, with no process group.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer

from switchyard import checkpoint as core
from switchyard.errors import CheckpointError

if TYPE_CHECKING:
    from switchyard_deepspeed.strategy import DeepSpeedStrategy

META_FILENAME = "switchyard-deepspeed.json"
STATE_FILENAME = "state.pt"
FORMAT = "switchyard-deepspeed"
FORMAT_VERSION = 1

_FORCE_VARIABLE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def _safe_global_objects() -> list[Any]:
    """The DeepSpeed classes its checkpoints pickle: plain data (an enum of ZeRO stages, the
    loss scaler's settings), none of which runs code when unpickled."""
    objects: list[Any] = []
    for module, names in (
        ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
        ("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
        ("deepspeed.utils.tensor_fragment", ("fragment_address",)),
    ):
        try:
            imported = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        objects.extend(getattr(imported, name) for name in names if hasattr(imported, name))
    return objects


SAFE_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "collections.OrderedDict",
    "enum._new_member_",
)
"""The globals beyond torch's safe set that a DeepSpeed checkpoint may name."""


@contextlib.contextmanager
def safe_loading(weights_only: bool) -> Iterator[None]:
    """Every ``torch.load`` in the block (DeepSpeed's included, which ask for
    ``weights_only=False``) uses the safe unpickler, allowing :data:`SAFE_GLOBALS`; nothing
    changes when ``weights_only`` is ``False``."""
    if not weights_only:
        yield
        return
    previous = os.environ.get(_FORCE_VARIABLE)
    os.environ[_FORCE_VARIABLE] = "1"
    try:
        with torch.serialization.safe_globals(_safe_global_objects()):
            yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_VARIABLE, None)
        else:
            os.environ[_FORCE_VARIABLE] = previous


def check_files(directory: Path, weights_only: bool) -> None:
    """Refuse, without running them, the ``.pt`` files under ``directory`` that name globals
    the safe loader would not allow (a crafted pickle), or that are no pickle at all."""
    if not weights_only:
        return
    allowed = set(SAFE_GLOBALS)
    for file in sorted(directory.rglob("*.pt")):
        report = core.inspect_pickle(file)
        if not report.valid:
            raise CheckpointError(
                f"{str(file)!r}, a file of the DeepSpeed checkpoint {str(directory)!r}, is not a "
                f"checkpoint or is corrupt (truncated, overwritten, or another format): "
                f"{report.problem}"
            )
        refused = [name for name in report.refused() if name not in allowed]
        if refused:
            listed = ", ".join(refused[:5]) + (", ..." if len(refused) > 5 else "")
            raise CheckpointError(
                f"{str(file)!r}, a file of the DeepSpeed checkpoint {str(directory)!r}, holds "
                f"objects that weights_only=True refuses to unpickle ({listed}). If you trust "
                "the file, load it with weights_only=False: that runs whatever code the file "
                "names."
            )


def read_meta(path: Path) -> dict[str, Any] | None:
    """The metadata of a checkpoint this plugin wrote at ``path``, or ``None`` if ``path`` is
    another kind of checkpoint."""
    file = path / META_FILENAME
    if not path.is_dir() or not file.is_file():
        return None
    try:
        meta = json.loads(file.read_bytes().decode("utf-8"))
    except OSError as error:
        raise CheckpointError(f"{str(file)!r} cannot be read: {error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        # decoding is inside the same try: a file of garbage is corrupt, not a crash
        raise CheckpointError(
            f"{str(file)!r}, the metadata of the DeepSpeed checkpoint {str(path)!r}, is corrupt "
            f"(truncated, overwritten, or another format): {type(error).__name__}: {error}"
        ) from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(file)!r} does not describe a {FORMAT} checkpoint (format "
            f"{meta.get('format') if isinstance(meta, dict) else None!r})"
        )
    return meta


def _deepspeed_version() -> str:
    try:
        return importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- saving ------------------------------------------------------------------------------------


def save(
    strategy: DeepSpeedStrategy,
    path: Path,
    state: Mapping[str, Any],
    filter: Mapping[str, Callable[[str, Any], bool]] | None,
) -> None:
    """Write ``state`` to the checkpoint directory ``path`` (module docstring). Every process
    must call it; a failure on any process raises a :class:`CheckpointError` on all."""
    engines: list[dict[str, Any]] = []
    rest: dict[str, Any] = {}
    by_engine: dict[int, dict[str, Any]] = {}
    for key, obj in state.items():
        engine = _engine_of(strategy, obj)
        if engine is None:
            rest[key] = obj
            continue
        if filter is not None and key in filter:
            raise CheckpointError(
                f"save filter[{key!r}]: state[{key!r}] is saved by its DeepSpeed engine, whole "
                "(engine.save_checkpoint); drop it from filter"
            )
        entry = by_engine.get(id(engine))
        if entry is None:
            entry = {"tag": f"engine{len(engines)}", "module": None, "optimizer": None}
            by_engine[id(engine)] = entry
            engines.append(entry)
            entry["_engine"] = engine
        role = "optimizer" if isinstance(obj, Optimizer) else "module"
        if entry[role] is not None:
            raise CheckpointError(
                f"state[{entry[role]!r}] and state[{key!r}] are the same engine's {role}; save "
                "it under one key"
            )
        entry[role] = key
    savable = strategy._to_savable(rest, filter)
    failure: str | None = None
    staged: core.StagedDirectory | None = None
    token: str | None = None
    if strategy.is_global_zero:
        try:
            staged = core.StagedDirectory.create(path)
            token = staged.token
        except Exception as error:
            failure = f"{type(error).__name__}: {error}"
    token, failure = strategy.broadcast((token, failure), src=0)
    if failure is not None:
        raise CheckpointError(f"could not save the checkpoint {str(path)!r}: {failure}")
    assert token is not None
    if staged is None:
        staged = core.StagedDirectory.join(path, token)
    problem: str | None = None
    try:
        for entry in engines:
            # every process writes its shards; DeepSpeed synchronises the processes itself
            entry["_engine"].save_checkpoint(
                str(staged.directory), tag=entry["tag"], client_state={}, save_latest=False
            )
        if strategy.is_global_zero:
            core.atomic_save(savable, staged.directory / STATE_FILENAME)
            meta = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "deepspeed": _deepspeed_version(),
                "world_size": strategy.world_size,
                "zero_stage": strategy.zero_stage,
                "engines": [{k: v for k, v in e.items() if not k.startswith("_")} for e in engines],
                "state": sorted(savable),
            }
            (staged.directory / META_FILENAME).write_text(json.dumps(meta, indent=2))
    except Exception as caught:
        problem = f"rank {strategy.global_rank}: {type(caught).__name__}: {caught}"
    errors = _gather(strategy, problem)
    staged.release()
    if strategy.is_global_zero:
        try:
            if errors:
                staged.discard()
            else:
                staged.publish()
        except Exception as caught:
            errors.append(f"rank 0 could not publish it: {type(caught).__name__}: {caught}")
    errors = strategy.broadcast(errors, src=0)
    if errors:
        raise CheckpointError(
            f"could not save the checkpoint {str(path)!r}; the previous one there, if any, is "
            f"unchanged: {'; '.join(errors)}"
        )


def _gather(strategy: DeepSpeedStrategy, error: str | None) -> list[str]:
    if strategy.world_size == 1:
        return [error] if error else []
    import torch.distributed as dist

    gathered: list[str | None] = [None] * strategy.world_size
    dist.all_gather_object(gathered, error)
    return [e for e in gathered if e]


def _engine_of(strategy: DeepSpeedStrategy, obj: Any) -> Any:
    if isinstance(obj, (nn.Module, Optimizer)):
        try:
            return strategy.engine(obj)
        except ValueError:
            return None
    return None


# -- loading -----------------------------------------------------------------------------------


def load(
    strategy: DeepSpeedStrategy,
    path: Path,
    state: Mapping[str, Any],
    strict: bool,
    weights_only: bool,
) -> dict[str, Any]:
    """Restore ``state`` from ``path``; return the checkpoint's entries ``state`` did not ask
    for. Every process must call it."""
    path = core.resolve(path)
    meta = read_meta(path)
    if meta is None:
        return _load_foreign(strategy, path, state, strict, weights_only)
    saved_world = meta.get("world_size")
    if not isinstance(saved_world, int) or saved_world < 1:
        raise CheckpointError(
            f"{str(path / META_FILENAME)!r} names no number of processes (world_size "
            f"{saved_world!r}); the checkpoint is corrupt"
        )
    # ZeRO's files are cut per process: another number of processes reads them through
    # DeepSpeed's universal format (a stage-0 engine's files are whole in any job)
    reshard = saved_world != strategy.world_size and zero_stage_of(meta) > 0
    check_files(path, weights_only)
    plain = core.load_file(path / STATE_FILENAME, weights_only=weights_only)
    engine_keys = {
        key: entry
        for entry in meta.get("engines", [])
        for key in (entry["module"], entry["optimizer"])
        if key
    }
    known = set(plain) | set(engine_keys)
    missing = [key for key in state if key not in known]
    if missing and strict:
        raise KeyError(
            f"the checkpoint has no entry {missing[0]!r}; it holds {sorted(known)}. Pass "
            "strict=False to load what is there."
        )
    wanted: list[tuple[dict[str, Any], Any]] = []
    for key, obj in state.items():
        entry = engine_keys.get(key)
        if entry is None or any(entry is seen for seen, _ in wanted):
            continue
        engine = _engine_of(strategy, obj)
        if engine is None:
            role = "optimizer" if entry["optimizer"] == key else "module"
            raise CheckpointError(
                f"checkpoint entry {key!r} is a DeepSpeed engine's {role}, but state[{key!r}] "
                f"is a {type(obj).__name__} no engine of this strategy trains; pass what "
                "runtime.setup() returned"
            )
        if engine.zero_nvme_offload_optimizer():
            # DeepSpeed 0.19 restores an NVMe-offloaded optimizer only from copies of its swap
            # files, and tensors under 1 MiB are never swapped: their float32 values would stay
            # those of the fresh engine, silently
            raise CheckpointError(
                f"state[{key!r}] is trained by an engine whose optimizer is offloaded to NVMe; "
                "DeepSpeed restores such an engine only from its swap files, which leave out "
                "every tensor under 1 MiB (they are kept in memory), so the loaded weights would "
                "be partly the fresh engine's. Load the checkpoint weights without the engine "
                f"(switchyard_deepspeed.consolidate({str(path)!r}, ...)) instead"
            )
        wanted.append((entry, engine))
    with contextlib.ExitStack() as stack:
        source = path
        if reshard and wanted:
            tags = [entry["tag"] for entry, _ in wanted]
            source = stack.enter_context(_universal_copy(strategy, path, tags, weights_only))
        for entry, engine in wanted:
            with_optimizer = entry["optimizer"] is not None and entry["optimizer"] in state
            with safe_loading(weights_only), _universal_loading(engine, reshard):
                loaded, _ = engine.load_checkpoint(
                    str(source),
                    tag=entry["tag"],
                    load_module_strict=strict,
                    load_optimizer_states=with_optimizer,
                    load_lr_scheduler_states=with_optimizer,
                    load_module_only=not with_optimizer,
                )
            if loaded is None:
                raise CheckpointError(
                    f"DeepSpeed found no checkpoint under {str(source / entry['tag'])!r}"
                )
    rest = {key: obj for key, obj in state.items() if key not in engine_keys}
    remainder = strategy._restore(plain, rest, strict=False) if rest else dict(plain)
    if isinstance(state, dict):
        for key in rest:
            if key in plain and key in state and not hasattr(state[key], "load_state_dict"):
                state[key] = plain[key]
    return {key: value for key, value in remainder.items() if key not in state}


def zero_stage_of(meta: Mapping[str, Any]) -> int:
    stage = meta.get("zero_stage", 0)
    return stage if isinstance(stage, int) else 0


@contextlib.contextmanager
def _universal_copy(
    strategy: DeepSpeedStrategy, path: Path, tags: list[str], weights_only: bool
) -> Iterator[Path]:
    """A copy of the engines ``tags`` of ``path`` in DeepSpeed's universal checkpoint format
    (``deepspeed.checkpoint.ds_to_universal``: each parameter's float32 value and optimizer
    states whole), which any number of processes loads. Rank zero writes it beside ``path``
    (where every process reads ``path`` from); it is removed when the block ends."""
    import uuid

    directory = path.parent / f".{path.name}.universal-{uuid.uuid4().hex[:12]}"
    failure: str | None = None
    if strategy.is_global_zero:
        try:
            _convert_to_universal(path, directory, tags, weights_only)
        except Exception as error:
            failure = f"{type(error).__name__}: {error}"
    failure = strategy.broadcast(failure, src=0)
    try:
        if failure is not None:
            raise CheckpointError(
                f"the DeepSpeed checkpoint {str(path)!r} was saved by another number of "
                f"processes than this job's {strategy.world_size}, and converting it to "
                f"DeepSpeed's universal format in {str(directory)!r} failed: {failure}. Load "
                "it in as many processes as saved it, or consolidate it "
                "(switchyard_deepspeed.consolidate) and load the weights into a fresh engine"
            )
        yield directory
    finally:
        strategy.barrier()  # every process has read the copy
        if strategy.is_global_zero:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


def _convert_to_universal(path: Path, directory: Path, tags: list[str], weights_only: bool) -> None:
    import argparse
    import io

    from deepspeed.checkpoint import ds_to_universal

    directory.mkdir()
    for tag in tags:
        arguments = argparse.Namespace(
            input_folder=str(path / tag),
            output_folder=str(directory / tag),
            # in this process: a pool's workers would outlive a killed job
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            # DeepSpeed's own engine writes no universal_checkpoint_info; the defaults fit a
            # model without tensor or pipeline parallelism, which is what this strategy runs
            inject_missing_state=True,
        )
        # the converter prints its progress; keep it for the error only
        chatter = io.StringIO()
        try:
            with (
                safe_loading(weights_only),
                contextlib.redirect_stdout(chatter),
                contextlib.redirect_stderr(chatter),
            ):
                ds_to_universal.main(arguments)
        except Exception as error:
            raise RuntimeError(
                f"{error}; converter output: {chatter.getvalue()[-2000:]}"
            ) from error
    # no second scan of the copy: it was written from the files scanned before, and every load
    # of it runs under safe_loading all the same


@contextlib.contextmanager
def _universal_loading(engine: Any, universal: bool) -> Iterator[None]:
    """The engine reads a universal checkpoint (its config's ``checkpoint.load_universal``)
    for this one load."""
    if not universal:
        yield
        return
    config = engine._config
    previous = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        yield
    finally:
        config.load_universal_checkpoint = previous


def _load_foreign(
    strategy: DeepSpeedStrategy,
    path: Path,
    state: Mapping[str, Any],
    strict: bool,
    weights_only: bool,
) -> dict[str, Any]:
    """A checkpoint another strategy wrote (one file, or core's sharded directory): its
    modules load into the engines' modules; optimizer states of another format cannot."""
    loaded = core.load(path, weights_only=weights_only)
    for key, obj in state.items():
        if isinstance(obj, Optimizer) and key in loaded:
            raise CheckpointError(
                f"checkpoint entry {key!r} of {str(path)!r} is an optimizer state written by "
                "another strategy, which DeepSpeed's sharded optimizer cannot take; load the "
                "module alone (leave the optimizer out of state) and train on from there"
            )
    return strategy._restore(loaded, state, strict)


# -- consolidating -----------------------------------------------------------------------------


def load_full(path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """Every entry of the DeepSpeed checkpoint at ``path``, in this one process, with no process
    group: each engine's module as a float32 state dict of plain CPU tensors (merged from every
    process's master-weight shards), the other entries as saved. The engines' optimizer states
    are left out: they are DeepSpeed's flat shards, which no plain optimizer takes."""
    path = core.resolve(Path(path))
    meta = read_meta(path)
    if meta is None:
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint of the deepspeed strategies (it has no "
            f"{META_FILENAME}); read other checkpoints with switchyard.checkpoint.load"
        )
    check_files(path, weights_only)
    state = core.load_file(path / STATE_FILENAME, weights_only=weights_only)
    for entry in meta.get("engines", []):
        if entry.get("module") is None:
            continue
        state[entry["module"]] = _fp32_module_state(path, entry["tag"], meta, weights_only)
    return state


def _fp32_module_state(
    path: Path, tag: str, meta: Mapping[str, Any], weights_only: bool
) -> dict[str, torch.Tensor]:
    with safe_loading(weights_only):
        if int(meta.get("zero_stage", 0)) == 0:
            # no shards: the module's own state dict, in the engine's dtype
            saved = torch.load(path / tag / "mp_rank_00_model_states.pt", map_location="cpu")
            module = saved["module"]
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            module = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
    return {
        k: (v.float() if torch.is_floating_point(v) else v).detach().cpu().contiguous()
        for k, v in module.items()
    }


def consolidate(
    source: str | Path,
    destination: str | Path,
    weights_only: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the DeepSpeed checkpoint ``source`` as one ``torch.save`` file ``destination``
    (atomically) that ``torch.load(weights_only=True)`` reads and whose modules load into a plain
    ``nn.Module`` (float32; see :func:`load_full`). Returns what was written."""
    destination = Path(destination)
    if (destination.exists() or destination.is_symlink()) and not overwrite:
        raise CheckpointError(
            f"{str(destination)!r} exists; pass overwrite=True to replace it, or choose another "
            "destination"
        )
    state = load_full(source, weights_only=weights_only)
    core.atomic_save(state, destination)
    return state
