"""Sharded checkpoint directories: written by every process of a job through
``torch.distributed.checkpoint`` (DCP), read safely by any number of processes, or by one
process with no strategy and no process group (:func:`load_full`, ``switchyard consolidate``).

The layout (what FSDP's ``runtime.save`` writes, kept from ``switchyard-fsdp``'s first release):

* ``.metadata`` and ``__<rank>_<n>.distcp``: DCP's checkpoint of the entries that hold sharded
  tensors (modules, optimizers, and any value with a ``DTensor`` in it), every process its
  shards;
* ``meta.pt`` (:data:`META_FILENAME`): a ``torch.save`` file written by global rank zero
  holding the format tag, the keys of those entries, and every other entry's value.

A plain DCP directory (``.metadata`` without ``meta.pt``, as ``torch.distributed.checkpoint``
writes it) is read too.

Safety: DCP's own reader unpickles ``.metadata`` with plain ``pickle`` and non-tensor values with
``torch.load(weights_only=False)``. Here ``.metadata`` is read by :class:`MetadataUnpickler`, which
admits only DCP's metadata classes, ``torch.Size``, dtypes and layouts, and is then checked
(file names inside the directory, records inside their files, sizes the files can hold);
non-tensor values are read with ``torch.load(weights_only=True)``; tensor records already are.
``weights_only=False`` restores DCP's own readers, for trusted checkpoints.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from switchyard import checkpoint
from switchyard.errors import CheckpointError

if TYPE_CHECKING:
    from switchyard.strategy import Strategy

META_FILENAME = "meta.pt"
"""In a sharded checkpoint directory: the entries of ``state`` that hold no sharded tensors
(step counters, scheduler states) and the keys of those that do, written by global rank zero."""

DCP_METADATA = ".metadata"
FORMAT = "switchyard-fsdp-sharded"
VERSION = 1


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint directory (``meta.pt`` or DCP's ``.metadata`` inside)."""
    path = Path(path)
    return path.is_dir() and ((path / META_FILENAME).is_file() or (path / DCP_METADATA).is_file())


# -- DCP metadata, read without running code --------------------------------------------------------

_METADATA_GLOBALS: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset(
        {
            "Metadata",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "TensorProperties",
            "MetadataIndex",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        }
    ),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch": frozenset({"Size"}),
    "pathlib": frozenset({"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"}),
    "collections": frozenset({"OrderedDict"}),
}
"""The globals DCP's ``.metadata`` refers to (besides dtypes): its dataclasses and enum,
``torch.Size``, layouts by name, the checkpoint id as a path. None of them runs code when called
with the file's arguments."""


class _Refused(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(f"refused global {name}")
        self.name = name


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` admitting only :data:`_METADATA_GLOBALS` and dtypes: a
    pickle naming anything else is refused at that name, before it is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("DCP metadata holds no persistent references")


def read_metadata(directory: str | Path, weights_only: bool = True) -> Any:
    """DCP's ``Metadata`` of the checkpoint ``directory``, read safely (unless
    ``weights_only=False``) and checked against the files beside it; ``CheckpointError`` if it
    is refused, corrupt, or promises what the files do not hold."""
    from torch.distributed.checkpoint.metadata import Metadata

    directory = Path(directory)
    file = directory / DCP_METADATA
    where = repr(str(file))
    if not file.is_file():
        raise CheckpointError(
            f"{str(directory)!r} holds no {DCP_METADATA}, so it is not a torch.distributed."
            f"checkpoint directory. It holds: {_listing(directory)}"
        )
    try:
        with open(file, "rb") as handle:
            if weights_only:
                # the memo indices bounded first: 7 crafted bytes make the C unpickler fill
                # gigabytes of memo before it meets anything it could refuse
                data = handle.read()
                checkpoint.check_pickle_memo(data, where)
                unpickler: pickle.Unpickler = MetadataUnpickler(io.BytesIO(data))
            else:  # the caller trusts the checkpoint: DCP's own plain pickle
                unpickler = pickle.Unpickler(handle)
            metadata = unpickler.load()
    except CheckpointError:
        raise
    except _Refused as refused:
        raise CheckpointError(
            f"{where} holds objects that the safe loader refuses to unpickle ({refused.name}); "
            "DCP metadata holds only DCP's own classes, sizes and dtypes. If you trust the "
            "checkpoint, load it with weights_only=False: that runs whatever code the file "
            "names."
        ) from None
    except OSError as error:
        raise CheckpointError(
            f"could not read {where}: {checkpoint.describe_os_error(error, file)}"
        ) from error
    except Exception as error:
        raise CheckpointError(
            f"{where} is not DCP metadata or is corrupt (truncated or overwritten?): "
            f"{type(error).__name__}: {str(error)[:200]}"
        ) from error
    if not isinstance(metadata, Metadata):
        raise CheckpointError(
            f"{where} holds a {type(metadata).__name__}, not torch.distributed.checkpoint's "
            "Metadata: not a DCP checkpoint"
        )
    _check_metadata(file, metadata)
    return metadata


def _check_metadata(file: Path, metadata: Any) -> None:
    """Refuse metadata that points outside its directory, at records its files do not hold, or
    at more tensor data than the files can hold (which would exhaust memory when allocated)."""
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        TensorStorageMetadata,
    )

    where = repr(str(file))
    directory = file.parent
    if not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{where} is corrupt: state_dict_metadata is not a dict")
    sizes: dict[str, int] = {}
    storage = metadata.storage_data or {}
    if not isinstance(storage, dict):
        raise CheckpointError(f"{where} is corrupt: storage_data is not a dict")
    transformed = False
    for index, info in storage.items():
        name = getattr(info, "relative_path", None)
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if (
            not isinstance(name, str)
            or not name
            or name != os.path.basename(name)
            or name in (".", "..")
            or not isinstance(offset, int)
            or not isinstance(length, int)
            or offset < 0
            or length < 0
        ):
            raise CheckpointError(
                f"{where} is corrupt: the record of {getattr(index, 'fqn', index)!r} points at "
                f"{name!r} (offset {offset!r}, length {length!r}), not at a file of the "
                "checkpoint directory"
            )
        if name not in sizes:
            try:
                sizes[name] = (directory / name).stat().st_size
            except OSError:
                raise CheckpointError(
                    f"{str(directory)!r} is incomplete: {where} names the file {name!r}, which "
                    f"is missing. The directory holds: {_listing(directory)}"
                ) from None
        if offset + length > sizes[name]:
            raise CheckpointError(
                f"{str(directory / name)!r} is truncated: {where} puts the record of "
                f"{getattr(index, 'fqn', index)!r} at bytes {offset}..{offset + length}, the "
                f"file has {sizes[name]}"
            )
        transformed = transformed or bool(getattr(info, "transform_descriptors", None))
    claimed = 0
    for key, item in metadata.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            dtype = item.properties.dtype
            if not isinstance(dtype, torch.dtype) or not isinstance(item.size, torch.Size):
                raise CheckpointError(f"{where} is corrupt: entry {key!r} has no valid dtype/size")
            numel = 1
            for n in item.size:
                if not isinstance(n, int) or n < 0:
                    raise CheckpointError(f"{where} is corrupt: entry {key!r} has size {item.size}")
                numel *= n
            claimed += numel * dtype.itemsize
        elif not isinstance(item, BytesStorageMetadata):
            raise CheckpointError(f"{where} is corrupt: entry {key!r} is a {type(item).__name__}")
    held = sum(sizes.values())
    if not transformed and claimed > held:
        raise CheckpointError(
            f"{where} is corrupt: it describes {claimed} bytes of tensors, but the files it "
            f"names hold {held} bytes"
        )


def _listing(directory: Path) -> str:
    try:
        names = sorted(p.name for p in directory.iterdir())
    except OSError:
        return "(cannot be listed)"
    return ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "nothing"


# -- DCP readers and planners that unpickle nothing unsafely ------------------------------------


def _reader(directory: Path, metadata: Any, weights_only: bool) -> Any:
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    if not weights_only:
        return FileSystemReader(directory)

    class SafeReader(FileSystemReader):
        """DCP's file reader, handing out the metadata :func:`read_metadata` read and checked
        instead of unpickling ``.metadata`` with plain ``pickle``. Tensor records are read with
        ``torch.load(weights_only=True)`` by DCP itself."""

        def _slice_file(self, file: Any, sinfo: Any) -> Any:
            # tensor records go to torch.load inside DCP: their zip record sizes are bounded
            # by the record (offset and length already checked against the file)
            view = super()._slice_file(file, sinfo)
            what = f"the record at byte {sinfo.offset} of {str(directory / sinfo.relative_path)!r}"
            checkpoint.check_zip_sizes(view, what)
            return view

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(directory)


def _load_bytes(planner: Any, read_item: Any, value: io.BytesIO, directory: Path) -> None:
    """``DefaultLoadPlanner.load_bytes`` with ``torch.load(weights_only=True)``."""
    from torch.distributed.checkpoint._traverse import set_element

    data = value.getvalue()
    fqn = read_item.dest_index.fqn
    info = (getattr(planner.metadata, "storage_data", None) or {}).get(read_item.storage_index)
    file = directory / info.relative_path if info is not None else directory
    what = f"the record of {fqn!r} in {str(file)!r}"
    checkpoint.check_zip_sizes(io.BytesIO(data), what)
    try:
        obj = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:
        raise checkpoint.refused_or_corrupt(what, error, True, data=data) from None
    if planner.flatten_state_dict:
        set_element(planner.original_state_dict, planner.mappings[fqn], obj)
    else:
        planner.state_dict[fqn] = obj


def _planner(directory: Path, weights_only: bool, strict: bool) -> Any:
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    if not weights_only:
        return DefaultLoadPlanner(allow_partial_load=not strict)

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            _load_bytes(self, read_item, value, directory)

    return SafeLoadPlanner(allow_partial_load=not strict)


def _full_planner(directory: Path, weights_only: bool, keys: set[str] | None) -> Any:
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

    if not weights_only:
        return _EmptyStateDictLoadPlanner(keys=keys)

    class SafeFullPlanner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            _load_bytes(self, read_item, value, directory)

    return SafeFullPlanner(keys=keys)


def _translate_dcp_errors(
    directory: Path, metadata: Any, action: Callable[[], None], verb: str = "read"
) -> None:
    """Run a DCP load or save; its failures (gathered from every process into one
    ``CheckpointException``) become a :class:`CheckpointError` naming the directory and the
    cause of the first failing rank."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        action()
    except CheckpointException as error:
        failures = sorted(error.failures.items())
        for _, wrapped in failures:
            cause = wrapped[0] if isinstance(wrapped, tuple) else wrapped
            if isinstance(cause, CheckpointError):
                raise CheckpointError(str(cause)) from error
        rank, first = failures[0] if failures else (0, (error, None))
        cause = first[0] if isinstance(first, tuple) else first
        raise _describe_failure(directory, metadata, rank, cause, verb) from error
    except CheckpointError:
        raise
    except OSError as error:
        raise CheckpointError(
            f"could not {verb} the sharded checkpoint {str(directory)!r}: "
            f"{checkpoint.describe_os_error(error, directory)}"
        ) from error


def _describe_failure(
    directory: Path, metadata: Any, rank: int, cause: BaseException, verb: str
) -> CheckpointError:
    if isinstance(cause, OSError):
        return CheckpointError(
            f"could not {verb} the sharded checkpoint {str(directory)!r}: global rank {rank}: "
            f"{checkpoint.describe_os_error(cause, directory)}"
            + (". The previous checkpoint there, if any, is unchanged" if verb == "save" else "")
        )
    if verb == "read" and metadata is not None:
        culprit = _find_bad_tensor_record(directory, metadata)
        if culprit is not None:
            return culprit
    return CheckpointError(
        f"could not {verb} the sharded checkpoint {str(directory)!r}: global rank {rank}: "
        f"{type(cause).__name__}: {str(cause)[:300]}"
    )


def _find_bad_tensor_record(directory: Path, metadata: Any) -> CheckpointError | None:
    """After DCP refused a tensor record: which one, and whether it holds objects or is
    corrupt. Tensor records are read by DCP with ``weights_only=True`` whatever the caller
    asks, so no opt-out is offered for them."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    tensors = {
        key
        for key, item in metadata.state_dict_metadata.items()
        if isinstance(item, TensorStorageMetadata)
    }
    for index, info in (metadata.storage_data or {}).items():
        if index.fqn not in tensors:
            continue
        file = directory / info.relative_path
        try:
            with open(file, "rb") as handle:
                handle.seek(info.offset)
                data = handle.read(info.length)
        except OSError:
            continue
        try:
            loaded = torch.load(io.BytesIO(data), weights_only=True)
            if isinstance(loaded, torch.Tensor):
                continue
            error: Exception = TypeError(f"a {type(loaded).__name__}, not a tensor")
        except Exception as caught:
            error = caught
        return checkpoint.refused_or_corrupt(
            f"the tensor record of {index.fqn!r} in {str(file)!r}",
            error,
            True,
            data=data,
            opt_out_helps=False,
        )
    return None


# -- reading ----------------------------------------------------------------------------------------


def load_into(
    state_dict: dict[str, Any], directory: str | Path, weights_only: bool, strict: bool
) -> None:
    """DCP's ``load`` of ``state_dict`` (tensors filled in place, resharded to their
    placements; every process of the job calls it) from ``directory``, safely."""
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    directory = Path(directory)
    metadata = read_metadata(directory, weights_only)
    reader = _reader(directory, metadata, weights_only)
    planner = _planner(directory, weights_only, strict)
    _translate_dcp_errors(
        directory,
        metadata,
        lambda: dcp_load(state_dict, storage_reader=reader, planner=planner),
    )


def read_full(
    directory: str | Path, keys: Iterable[str] | None = None, weights_only: bool = True
) -> dict[str, Any]:
    """The entries ``keys`` (default: all) of the DCP checkpoint ``directory`` as full CPU
    tensors and plain values, read by this process alone (no collective, whether or not a
    process group exists)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    directory = Path(directory)
    metadata = read_metadata(directory, weights_only)
    reader = _reader(directory, metadata, weights_only)
    planner = _full_planner(directory, weights_only, set(keys) if keys is not None else None)
    state: dict[str, Any] = {}
    _translate_dcp_errors(
        directory,
        metadata,
        lambda: _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True),
    )
    return state


def read_meta(directory: str | Path, weights_only: bool) -> tuple[list[str], dict[str, Any]]:
    """The keys of the sharded entries and the plain entries of the checkpoint ``directory``
    (from ``meta.pt``; a plain DCP directory has every entry sharded and none plain);
    ``CheckpointError`` if it is no checkpoint directory."""
    directory = Path(directory)
    meta_file = directory / META_FILENAME
    if not meta_file.is_file():
        if (directory / DCP_METADATA).is_file():
            metadata = read_metadata(directory, weights_only)
            top = {_top_key(metadata, key) for key in metadata.state_dict_metadata}
            return sorted(top), {}
        raise CheckpointError(
            f"{str(directory)!r} is a directory without {META_FILENAME} or {DCP_METADATA}, so "
            f"not a sharded checkpoint. It holds: {_listing(directory)}"
        )
    meta = checkpoint.load_file(meta_file, weights_only=weights_only)
    if meta.get("format") != FORMAT or not isinstance(meta.get("sharded"), list):
        raise CheckpointError(f"{str(meta_file)!r} is not a {FORMAT} metadata file")
    return list(meta["sharded"]), dict(meta.get("state") or {})


def _top_key(metadata: Any, key: str) -> str:
    path = (metadata.planner_data or {}).get(key)
    return str(path[0]) if path else key


def load_full(directory: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """Every entry of the sharded checkpoint ``directory``, read by this one process with no
    strategy: modules as full CPU tensors keyed like ``module.state_dict()``, optimizers as
    ``Optimizer.state_dict()`` has them (keyed by parameter index), other values as saved."""
    directory = Path(directory)
    sharded_keys, plain = read_meta(directory, weights_only)
    full = read_full(directory, sharded_keys, weights_only) if sharded_keys else {}
    out: dict[str, Any] = {}
    for key in [*sharded_keys, *plain]:
        if key in full:
            value = full[key]
            out[key] = names_to_index(value) if is_named_optimizer_state(value) else value
        elif key in plain:
            out[key] = plain[key]
    return out


# -- optimizer state keyed by parameter name or by index ----------------------------------------


def is_named_optimizer_state(value: Any) -> bool:
    """Whether ``value`` is an optimizer state dict keyed by parameter name, as DCP's
    ``get_optimizer_state_dict`` writes it."""
    if not isinstance(value, Mapping) or set(value) != {"state", "param_groups"}:
        return False
    groups = value["param_groups"]
    return (
        isinstance(groups, list)
        and bool(groups)
        and all(isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in groups)
        and all(isinstance(p, str) for g in groups for p in g["params"])
    )


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


# -- writing ----------------------------------------------------------------------------------------


def _writer(directory: Path) -> Any:
    """DCP's file writer, made to report the ``OSError`` of a failed write (a full file system,
    a file-size limit): inside ``torch.save`` it becomes ``enforce fail at inline_container.cc``,
    which names no cause. Raised from this process's part of the save, it reaches every
    process with DCP's gathered failures."""
    from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemWriter

    errors: list[OSError] = []

    class RecordingFileIO(io.FileIO):
        def write(self, data: Any) -> int:
            try:
                return super().write(data)
            except OSError as error:
                errors.append(error)
                raise

    class RecordingFileSystem(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
            if "w" not in mode and "a" not in mode:
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            with io.BufferedWriter(RecordingFileIO(os.fspath(path), mode)) as stream:
                yield stream

    def reraise(error: Exception) -> None:
        if errors and not isinstance(error, OSError):
            raise errors[0] from error
        raise error

    class Writer(FileSystemWriter):
        def __init__(self) -> None:
            super().__init__(directory)
            self.fs = RecordingFileSystem()

        def write_data(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().write_data(*args, **kwargs)
            except Exception as error:
                reraise(error)

        def finish(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().finish(*args, **kwargs)
            except Exception as error:
                reraise(error)

    return Writer()


def save_sharded(
    strategy: Strategy, path: str | Path, sharded: Mapping[str, Any], plain: Mapping[str, Any]
) -> None:
    """Write the directory ``path``: the values in ``sharded`` (every process its shards) with
    DCP, and ``plain`` in ``meta.pt`` (global rank zero). Written under ``.NAME.tmp-*``
    (:class:`~switchyard.checkpoint.StagedDirectory`) and published by rank zero once every
    process has written its part, so ``path`` only ever names a complete checkpoint; stale
    temporaries of earlier, killed saves are deleted first. Every process must call it; a
    failure on any process raises the same :class:`CheckpointError` on all of them and leaves
    the previous checkpoint as it was."""
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    path = Path(path)
    staged: checkpoint.StagedDirectory | None = None
    outcome: tuple[str, str]
    if strategy.is_global_zero:
        try:
            staged = checkpoint.StagedDirectory.create(path)
            outcome = ("ok", staged.token)
        except Exception as error:  # told to every process, so that none waits for rank zero
            outcome = (
                "error",
                str(error)
                if isinstance(error, CheckpointError)
                else f"could not save the checkpoint to {str(path)!r}: "
                f"{type(error).__name__}: {error}",
            )
    else:
        outcome = ("", "")
    outcome = _agree(strategy, outcome)
    if outcome[0] == "error":
        raise CheckpointError(outcome[1])
    if staged is None:
        staged = checkpoint.StagedDirectory.join(path, outcome[1])
    try:
        if sharded:
            _translate_dcp_errors(
                staged.directory,
                None,
                lambda: dcp_save(dict(sharded), storage_writer=_writer(staged.directory)),
                verb="save",
            )
    except CheckpointError as error:
        # every process raised (DCP gathers failures); rank zero removes the partial directory
        if strategy.is_global_zero:
            staged.discard()
        staged.release()
        raise CheckpointError(str(error).replace(str(staged.directory), str(path))) from error
    if not strategy.is_global_zero:
        staged.release()  # this process's part is written
    else:
        try:
            meta = {"format": FORMAT, "version": VERSION, "sharded": sorted(sharded)}
            checkpoint.atomic_save({**meta, "state": dict(plain)}, staged.directory / META_FILENAME)
            staged.publish()
            outcome = ("ok", "")
        except Exception as error:
            staged.discard()
            message = str(error) if isinstance(error, CheckpointError) else f"{error}"
            outcome = (
                "error",
                f"could not save the sharded checkpoint to {str(path)!r}: "
                + message.replace(str(staged.directory), str(path))
                + (
                    ""
                    if "unchanged" in message
                    else ". The previous checkpoint there, if any, is unchanged"
                ),
            )
    outcome = _agree(strategy, outcome)
    if outcome[0] == "error":
        raise CheckpointError(outcome[1])


def _agree(strategy: Strategy, outcome: tuple[str, str]) -> tuple[str, str]:
    """Rank zero's ``outcome`` on every process (a broadcast, which is also a barrier)."""
    if strategy.world_size == 1:
        return outcome
    return strategy.broadcast(outcome, src=0)
