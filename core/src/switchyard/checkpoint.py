"""Checkpoints on disk: written so that a crash never leaves a half-written one under the final
name, read so that no file of a checkpoint runs code.

Single files (:func:`atomic_save`, :func:`load_file`)
    ``torch.save`` into ``.NAME.<hex>.tmp`` beside the target, ``fsync``, ``os.replace`` over it,
    ``fsync`` of the directory: a crash leaves the old file or the new one.

Directories (:class:`StagedDirectory`, :func:`replace_directory`), for sharded checkpoints
    Every process writes into ``.NAME.tmp-<token>``; once complete it is renamed to
    ``.NAME.new-<token>`` (the rename says "complete"), the old checkpoint is renamed aside to
    ``.NAME.old-<token>``, the new one takes ``NAME``, and the old one is deleted. Renaming a
    non-empty directory over another is impossible on POSIX, so there is a moment between the
    two renames where ``NAME`` does not exist; a kill there leaves both the complete new
    checkpoint and the old one beside it, and :func:`resolve` (which every load and every save
    calls first) puts the new one under ``NAME``. A symlink swap would have no such moment, but
    it makes ``NAME`` a link, which ``rsync -a``, ``tar`` and object-store uploads copy as a
    link (a dangling one elsewhere); the gap is closed by recovery instead, so ``NAME`` stays a
    plain directory.

Stale temporaries
    Every process writing a temporary holds a shared ``flock`` on it for as long as it writes.
    The kernel drops the lock when the process dies, however it dies (``SIGKILL`` included), so
    a temporary whose lock can be taken exclusively belongs to no live save: the next save of
    the same name (:func:`remove_stale`) deletes it. One that is locked, or that lies on a file
    system without ``flock`` (where nothing can be proved), is left alone.

Errors
    Every failure is a :class:`~switchyard.errors.CheckpointError` naming the path and the cause
    (file system full, file-size limit, read-only, permission, an entry that cannot be pickled);
    the previous checkpoint is never touched by a failed save.

Safe loading
    :func:`load_file` reads with ``torch.load(weights_only=True)`` unless the caller opts out.
    When a file is refused, :func:`inspect_pickle` tells a file that really holds objects (the
    error names them and the opt-out) from one that is corrupt or no checkpoint at all (the
    error says so, and does not suggest unpickling it).

Declared sizes
    A file states sizes that readers allocate before they read: a pickle's memo indices (the C
    unpickler grows its memo to twice the largest index, and fills it), a zip archive's
    uncompressed record sizes (torch's reader allocates them). :func:`check_pickle_memo` and
    :func:`check_zip_sizes` hold them against the size of the file before any reader runs, so a
    few crafted bytes cannot make a load allocate gigabytes: they are refused as corrupt, naming
    the file, the field, the value declared and what the file can hold.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import os
import pickle
import pickletools
import re
import shutil
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from switchyard.errors import CheckpointError

fcntl: Any
try:  # POSIX; elsewhere nothing can be proved stale, and nothing is removed
    fcntl = importlib.import_module("fcntl")
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_LOCK_WAIT_S = 10.0
"""How long a save waits for the shared lock on its own new temporary (only a remover that
found it in the instant between its creation and its locking holds it, briefly)."""

_RECOVERY_WAIT_S = 5.0
"""How long :func:`resolve` waits for a concurrent recovery (another process of the same job
putting the same checkpoint back) before it reports what it found."""


# -- names of temporaries ---------------------------------------------------------------------


def _temporary_pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"^\.{re.escape(name)}\.(?:(?P<file>[0-9a-f]{{32}})\.tmp|(?P<kind>tmp|new|old)-[0-9a-f]{{12}})$"
    )


def temporaries(path: str | Path) -> list[tuple[str, Path]]:
    """The temporaries of saves of ``path`` beside it, as ``(kind, path)``: ``"file"``
    (``.NAME.<hex>.tmp``, a single file being written), ``"tmp"`` (``.NAME.tmp-*``, a directory
    being written), ``"new"`` (``.NAME.new-*``, a complete directory about to take the name) and
    ``"old"`` (``.NAME.old-*``, the previous checkpoint set aside). Newest first."""
    path = Path(path)
    pattern = _temporary_pattern(path.name)
    found: list[tuple[float, str, Path]] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or entry.is_symlink():  # never ours: left alone
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        kind = "file" if match.group("file") else match.group("kind")
        found.append((mtime, kind, Path(entry.path)))
    found.sort(key=lambda item: item[0], reverse=True)
    return [(kind, p) for _, kind, p in found]


# -- locks --------------------------------------------------------------------------------------


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


class Lease:
    """A shared lock on a temporary (file or directory) that this process is writing: while it is
    held, :func:`remove_stale` and :func:`resolve` leave the temporary alone. Released by
    :meth:`release`, or by the kernel when the process dies."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def lease(path: str | Path, fd: int | None = None) -> Lease | None:
    """Take a shared lock on ``path`` (through ``fd`` if given, which must be open on it).
    ``None`` if ``path`` is no longer the file ``fd`` is open on (a remover took it in the
    instant before the lock: the caller creates another); a :class:`Lease` holding nothing where
    the file system has no ``flock`` (nothing can then prove it stale either)."""
    path = Path(path)
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
    else:
        fd = os.dup(fd)
    if fcntl is None:
        os.close(fd)
        return Lease(None)
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.005)
        except OSError:  # no flock here (some network file systems)
            os.close(fd)
            return Lease(None)
    if not _same_file(path, fd):
        os.close(fd)
        return None
    return Lease(fd)


@contextlib.contextmanager
def _held_if_stale(path: Path) -> Iterator[bool]:
    """``True`` (with an exclusive lock held on ``path`` for the block) if no live process holds
    it: then it is provably stale. ``False`` if a process holds it, it vanished, or the file
    system cannot tell."""
    if fcntl is None:
        yield False
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held (BlockingIOError), or no flock on this file system
            yield False
            return
        yield _same_file(path, fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale(path: str | Path) -> list[Path]:
    """Delete the temporaries of saves of ``path`` that no live process holds (saves killed
    before they finished); returns what was deleted. A complete directory left by a save killed
    between its two renames is put back under ``path`` first (:func:`resolve`), never deleted
    while ``path`` is missing. Never raises: a temporary that cannot be deleted stays."""
    path = Path(path)
    resolve(path, wait=False)
    if not (path.exists() or path.is_symlink()):
        candidates = [(k, p) for k, p in temporaries(path) if k in ("file", "tmp")]
    else:
        candidates = temporaries(path)
    removed = []
    for _, candidate in candidates:
        with _held_if_stale(candidate) as stale:
            if stale:
                _remove(candidate)
                if not candidate.exists():
                    removed.append(candidate)
    return removed


# -- recovery -------------------------------------------------------------------------------------


def resolve(path: str | Path, wait: bool = True) -> Path:
    """``path``, after putting back under it a directory checkpoint that a save killed between
    its two renames left beside it (``.NAME.new-*``, complete, preferred; else the previous one,
    ``.NAME.old-*``). Nothing happens when ``path`` exists. Safe to call from every process of a
    job at once: one of them renames, the others find ``path`` there. On a read-only file
    system the candidate itself is returned, to be read where it lies."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return path
    deadline = time.monotonic() + (_RECOVERY_WAIT_S if wait else 0.0)
    while True:
        candidates = [p for kind in ("new", "old") for k, p in temporaries(path) if k == kind]
        if not candidates:
            return path
        busy = False
        for candidate in candidates:
            with _held_if_stale(candidate) as stale:
                if not stale:
                    # held: a live save between its renames, or another process of this job
                    # recovering it; never fall back to an older candidate meanwhile
                    busy = candidate.exists()
                    if busy:
                        break
                    continue
                try:
                    os.rename(candidate, path)
                except OSError as error:
                    if path.exists():
                        return path
                    if error.errno == errno.EROFS:
                        return candidate
                    continue
                fsync_directory(path.parent)
                return path
        if path.exists() or not busy or time.monotonic() > deadline:
            return path
        time.sleep(0.02)


# -- errors -----------------------------------------------------------------------------------------


def describe_os_error(error: OSError, where: str | Path) -> str:
    """The cause of a failed write or read, in words a user can act on."""
    code = error.errno
    if code == errno.ENOSPC:
        return "the file system is full (No space left on device)"
    if code == getattr(errno, "EDQUOT", -1):
        return "the disk quota of this user is exceeded (Disk quota exceeded)"
    if code == errno.EFBIG:
        return (
            f"the file would exceed this process's file-size limit (File too large; RLIMIT_FSIZE, "
            f"`ulimit -f`: {_file_size_limit()})"
        )
    if code == errno.EROFS:
        return "the file system is read-only (Read-only file system)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied: this user may not write there (Permission denied)"
    return f"{error.strerror or error}" + (f" (errno {code})" if code else "")


def _file_size_limit() -> str:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    except (ImportError, OSError, ValueError):
        return "unknown"
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


def _key_path(keys: tuple[Any, ...]) -> str:
    return "".join(f"[{k!r}]" for k in keys)


def _walk(obj: Any, keys: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every value in the nested dicts, lists and tuples of ``obj`` with the keys leading to it."""
    stack: list[tuple[tuple[Any, ...], Any]] = [(keys, obj)]
    while stack:
        here, value = stack.pop()
        yield here, value
        if isinstance(value, dict):
            stack.extend(((*here, k), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            stack.extend(((*here, i), v) for i, v in reversed(list(enumerate(value))))


class _NullSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


class _TensorStubPickler(pickle.Pickler):
    """A pickler that stands in for tensors and storages, to find what cannot be pickled
    without copying tensor data."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, (torch.Tensor, torch.UntypedStorage, torch.TypedStorage)):
            return id(obj)
        return None


def unpicklable_entry(obj: Any) -> tuple[str, Any, BaseException] | None:
    """The first value in ``obj`` (nested dicts, lists, tuples) that cannot be pickled, as
    ``(key path, value, error)``, or ``None``."""
    containers = (dict, list, tuple)
    for keys, value in _walk(obj):
        if isinstance(value, (containers, torch.Tensor)):
            continue
        try:
            _TensorStubPickler(_NullSink(), protocol=pickle.DEFAULT_PROTOCOL).dump(value)
        except Exception as error:
            return _key_path(keys), value, error
    return None


def sharded_tensor_entries(obj: Any) -> list[tuple[str, torch.Tensor]]:
    """The values in ``obj`` that hold only a part of a tensor spread over processes
    (``DTensor``, the older ``ShardedTensor``), as ``(key path, tensor)``. Checked without
    importing ``torch.distributed``: a sharded tensor exists only once its module is imported."""
    kinds: list[type] = []
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is not None and hasattr(dtensor, "DTensor"):
        kinds.append(dtensor.DTensor)
    legacy = sys.modules.get("torch.distributed._shard.sharded_tensor.api")
    if legacy is not None and hasattr(legacy, "ShardedTensor"):
        kinds.append(legacy.ShardedTensor)
    if not kinds:
        return []
    return [
        (_key_path(keys), value)
        for keys, value in _walk(obj)
        if isinstance(value, torch.Tensor) and isinstance(value, tuple(kinds))
    ]


def describe_sharded_tensor(tensor: torch.Tensor) -> str:
    """``"a DTensor sharded over 2 processes (Shard(dim=0))"`` and the like."""
    mesh = getattr(tensor, "device_mesh", None)
    placements = getattr(tensor, "placements", None)
    if mesh is not None and placements is not None:
        return (
            f"a {type(tensor).__name__} spread over {mesh.size()} process(es) "
            f"({', '.join(str(p) for p in placements)})"
        )
    return f"a {type(tensor).__name__}"


# -- single files -----------------------------------------------------------------------------------


class _RecordingWriter:
    """The file ``torch.save`` writes to, keeping the ``OSError`` of a failed write (torch's zip
    writer turns it into ``enforce fail at inline_container.cc``, which names no cause)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as error:
            self.error = self.error or error
            raise


def _make_parent(path: Path, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(
            f"could not {what} {str(path)!r}: its folder cannot be created: "
            f"{describe_os_error(error, path.parent)}"
        ) from error


def _create_temporary_file(path: Path) -> tuple[Path, IO[bytes], Lease | None]:
    # same directory, so os.replace is a rename within one file system. Created with open()
    # (exclusive) rather than tempfile.mkstemp, whose files are private (0600): the checkpoint
    # gets the permissions torch.save would have given it (0666 less the umask)
    for _ in range(5):
        tmp_name = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            handle = open(tmp_name, "xb")  # noqa: SIM115 (closed by the caller)
        except OSError as error:
            raise CheckpointError(
                f"could not save the checkpoint to {str(path)!r}: "
                f"{describe_os_error(error, path.parent)}. The previous checkpoint there, if "
                "any, is unchanged"
            ) from error
        held = lease(tmp_name, handle.fileno())
        if held is not None:
            return tmp_name, handle, held
        handle.close()  # removed by another save's cleanup in the instant before the lock
    raise CheckpointError(f"could not create a temporary file beside {str(path)!r}")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``. A crash at any point leaves either the old file or the new one, never a mix; a
    failure raises :class:`CheckpointError` with the cause and leaves the old file as it was.
    Stale temporaries of earlier, killed saves of ``path`` are deleted first."""
    path = Path(path)
    _make_parent(path, "save the checkpoint to")
    if path.is_dir():
        raise CheckpointError(
            f"cannot save checkpoint to {str(path)!r}: it is a directory; pass a file path "
            "such as 'checkpoints/last.pt'"
        )
    remove_stale(path)
    tmp_name, handle, held = _create_temporary_file(path)
    writer = _RecordingWriter(handle)
    try:
        try:
            with handle:
                torch.save(obj, writer)  # type: ignore[arg-type]
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            if isinstance(error, Exception):
                raise _save_error(path, obj, error, writer.error) from error
            raise
    finally:
        if held is not None:
            held.release()
    fsync_directory(path.parent)
    return path


def _save_error(
    path: Path, obj: Any, error: Exception, os_error: OSError | None
) -> CheckpointError:
    unchanged = "The previous checkpoint there, if any, is unchanged"
    if isinstance(error, CheckpointError):
        return error
    if os_error is None and isinstance(error, OSError):
        os_error = error
    if os_error is not None:
        return CheckpointError(
            f"could not save the checkpoint to {str(path)!r}: "
            f"{describe_os_error(os_error, path.parent)}. {unchanged}"
        )
    culprit = unpicklable_entry(obj)
    if culprit is not None:
        keys, value, cause = culprit
        return CheckpointError(
            f"could not save the checkpoint to {str(path)!r}: state{keys} "
            f"({type(value).__name__}) cannot be pickled ({type(cause).__name__}: {cause}). "
            "Save what it holds instead (its state_dict(), or plain values and tensors). "
            f"{unchanged}"
        )
    return CheckpointError(
        f"could not save the checkpoint to {str(path)!r}: {type(error).__name__}: {error}. "
        f"{unchanged}"
    )


def load_file(path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_save` onto the CPU.

    ``weights_only=True`` (the default) refuses arbitrary pickled objects; pass ``False`` only for
    checkpoints from a trusted source.
    """
    path = Path(path)
    if not path.exists():
        siblings = sorted(p.name for p in path.parent.glob("*")) if path.parent.is_dir() else []
        hint = f" The folder holds: {', '.join(siblings[:10])}." if siblings else ""
        raise CheckpointError(f"no checkpoint at {str(path)!r}.{hint}")
    if path.is_dir():
        raise CheckpointError(
            f"{str(path)!r} is a directory, not a single-file checkpoint; read a sharded "
            "checkpoint directory with runtime.load or switchyard.checkpoint.load"
        )
    try:
        if weights_only:
            check_declared_sizes(path, repr(str(path)))
        loaded = torch.load(path, map_location="cpu", weights_only=weights_only)
    except CheckpointError:
        raise
    except OSError as error:
        raise CheckpointError(
            f"could not read checkpoint {str(path)!r}: {describe_os_error(error, path)}"
        ) from error
    except Exception as error:
        raise refused_or_corrupt(repr(str(path)), error, weights_only, path=path) from error
    if not isinstance(loaded, dict):
        raise CheckpointError(
            f"{str(path)!r} holds a {type(loaded).__name__}, not the dict runtime.save writes"
        )
    return loaded


def load(path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """Every entry of the checkpoint at ``path``, in this one process, with no strategy: a
    single file as :func:`load_file` reads it, or a sharded checkpoint directory with its
    modules and optimizers as full (consolidated) CPU tensors, optimizer state keyed by
    parameter index as ``Optimizer.state_dict()`` has it. A directory in a plugin's own format
    (``switchyard_checkpoint_formats``: a DeepSpeed checkpoint) is read by that plugin. What
    ``switchyard consolidate`` writes."""
    path = resolve(Path(path))
    if path.is_dir():
        from switchyard import sharded

        if not sharded.is_sharded_checkpoint(path):
            reader = _plugin_format_reader(path)
            if reader is not None:
                return dict(reader(path, weights_only=weights_only))
        return sharded.load_full(path, weights_only=weights_only)
    return load_file(path, weights_only=weights_only)


def _plugin_format_reader(path: Path) -> Any:
    """The ``load_full`` of the plugin format whose marker file ``path`` holds, or ``None``."""
    from switchyard.registry import default_registry

    for info, entry in default_registry().checkpoint_formats():
        if not (path / entry.marker).is_file():
            continue
        missing = entry.missing_requirements()
        if missing:
            raise CheckpointError(
                f"{str(path)!r} is a {entry.name} checkpoint (it holds {entry.marker}), which "
                f"plugin {info.describe()} reads with {', '.join(missing)}, not installed here: "
                "install it to read the checkpoint"
            )
        return entry.load()
    return None


def consolidate(
    source: str | Path,
    destination: str | Path,
    weights_only: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the sharded checkpoint directory ``source`` as one ``torch.save`` file
    ``destination`` (atomically) that ``torch.load(weights_only=True)`` reads and whose modules
    and optimizers load into a plain ``nn.Module`` and optimizer (``load_state_dict``). Runs in
    this one process; needs memory for the whole model. Returns what was written."""
    source, destination = resolve(Path(source)), Path(destination)
    if not source.exists():
        raise CheckpointError(f"no checkpoint at {str(source)!r}")
    if not source.is_dir():
        raise CheckpointError(
            f"{str(source)!r} is a single-file checkpoint already; torch.load reads it as it is"
        )
    if (destination.exists() or destination.is_symlink()) and not overwrite:
        raise CheckpointError(
            f"{str(destination)!r} exists; pass overwrite=True (switchyard consolidate --force) "
            "to replace it, or choose another destination"
        )
    state = load(source, weights_only=weights_only)
    atomic_save(state, destination)
    return state


# -- declared sizes, checked before anything is allocated -------------------------------------------

_LINE_LIMIT = 1 << 16
"""The longest text argument (a line) of a pickle opcode read while checking a pickle; the
texts of checkpoint pickles (module and class names, decimal numbers) are far shorter."""


def _argument_layouts() -> dict[int, tuple[str, int]]:
    """Per opcode byte, how its argument is laid out: ``("fixed", n)`` bytes, ``("lines", n)``
    newline-terminated lines, or ``("counted", w)`` a ``w``-byte little-endian length then that
    many bytes (the layouts ``pickletools`` documents)."""
    counted = {-2: 1, -3: 4, -4: 4, -5: 8}
    layouts: dict[int, tuple[str, int]] = {}
    for op in pickletools.opcodes:
        code = ord(op.code.encode("latin-1"))
        n = 0 if op.arg is None else op.arg.n
        if n >= 0:
            layouts[code] = ("fixed", n)
        elif n == pickletools.UP_TO_NEWLINE:
            layouts[code] = ("lines", 2 if op.name in ("GLOBAL", "INST") else 1)
        else:
            layouts[code] = ("counted", counted[n])
    return layouts


_LAYOUTS = _argument_layouts()
_NAMES = {ord(op.code.encode("latin-1")): op.name for op in pickletools.opcodes}
_PUT, _BINPUT, _LONG_BINPUT = ord("p"), ord("q"), ord("r")
_MEMOIZE, _FRAME, _STOP = 0x94, 0x95, ord(".")
_SIGNED_LENGTHS = frozenset({ord("T"), 0x8B})
"""BINSTRING and LONG4 give their length as a signed number."""


class _Malformed(Exception):
    """The pickle cannot be walked further: the unpickler stops there too. ``ran_off``: at the
    end of the data, not at a bad opcode."""

    def __init__(self, ran_off: bool = False) -> None:
        super().__init__()
        self.ran_off = ran_off


def _walk_memo(data: bytes, start: int, what: str, size: int) -> int:
    """Walk the opcodes of the pickle at ``data[start:]`` up to ``STOP``, refusing a memo index
    beyond the entries stored so far; returns where the pickle ends. Raises
    :class:`_Malformed` where it cannot go on."""
    layouts, end = _LAYOUTS, len(data)
    stored = 0
    at = start
    while True:
        if at >= end:
            raise _Malformed(ran_off=True)
        position = at
        code = data[at]
        at += 1
        layout = layouts.get(code)
        if layout is None:
            raise _Malformed
        kind, n = layout
        index = -1
        if kind == "fixed":
            at += n
            if code in (_BINPUT, _LONG_BINPUT):
                index = int.from_bytes(data[at - n : at], "little")
            elif code == _FRAME and int.from_bytes(data[at - n : at], "little") > size - at:
                raise CheckpointError(
                    f"{what} is corrupt (crafted or damaged): its pickle declares a frame of "
                    f"{int.from_bytes(data[at - n : at], 'little')} bytes (FRAME at byte "
                    f"{position}, its length field), but the file has {max(0, size - at)} "
                    "bytes after it"
                )
        elif kind == "lines":
            for _ in range(n):
                newline = data.find(b"\n", at, min(end, at + _LINE_LIMIT))
                if newline < 0:
                    raise _Malformed(ran_off=end - at < _LINE_LIMIT)
                line, at = data[at:newline], newline + 1
            if code == _PUT:
                try:
                    index = int(line)
                except ValueError:
                    raise _Malformed from None
        else:
            count = int.from_bytes(data[at : at + n], "little", signed=code in _SIGNED_LENGTHS)
            at += n
            if count < 0:
                raise _Malformed
            if count > size - at:
                # the C unpickler allocates the declared length before it reads
                raise CheckpointError(
                    f"{what} is corrupt (crafted or damaged): its pickle declares a "
                    f"{count}-byte argument ({_NAMES[code]} at byte {position}, its length "
                    f"field), but the file has {max(0, size - at)} bytes after it"
                )
            at += count
        if at > end:
            raise _Malformed(ran_off=True)
        if code == _MEMOIZE:
            stored += 1
        elif index >= 0:
            if index > stored:
                name = {_PUT: "PUT", _BINPUT: "BINPUT"}.get(code, "LONG_BINPUT")
                raise CheckpointError(
                    f"{what} is corrupt (crafted or damaged): its pickle stores memo entry "
                    f"{index} ({name} at byte {position}) after {stored} entries, so it "
                    f"declares a memo of {index + 1} entries, which a file of {size} bytes "
                    f"cannot hold; unpickling it would allocate {16 * index} bytes"
                )
            stored += index == stored
        elif code == _STOP:
            return at


_SCAN_LIMIT = 256 << 20
"""The most of a stream :func:`check_pickle_memo` reads: the pickles it checks (a DCP
``.metadata``, the pickles at the start of torch's legacy format) are far smaller."""


def check_pickle_memo(source: IO[bytes] | bytes, what: str, pickles: int = 1) -> None:
    """Refuse (``CheckpointError``) the ``pickles`` consecutive pickles at the start of
    ``source`` if one stores a memo entry at an index that no pickler writes: picklers number
    their memo entries 0, 1, 2... in order, and the C unpickler (``pickle.Unpickler``) grows its
    memo to twice the largest index it meets and fills it, so a 7-byte pickle storing entry
    ``2**30`` makes it allocate and touch 16 GiB. The opcodes are walked without building any
    object; a pickle that is malformed further on is left for the unpickler to refuse (it stops
    there too). ``what`` names the file in the error. A stream's position is restored; one
    whose pickles do not end within :data:`_SCAN_LIMIT` bytes is refused."""
    if isinstance(source, bytes):
        data, size = source, len(source)
    else:
        start = source.tell()
        size = source.seek(0, os.SEEK_END) - start
        source.seek(start)
        try:
            data = source.read(min(size, _SCAN_LIMIT))
        finally:
            source.seek(start)
    at = 0
    for _ in range(pickles):
        try:
            at = _walk_memo(data, at, what, size)
        except _Malformed as malformed:
            if malformed.ran_off and len(data) < size:
                raise CheckpointError(
                    f"{what} cannot be checked: its pickle does not end within the first "
                    f"{_SCAN_LIMIT} bytes (of {size}); no checkpoint pickle is that large"
                ) from None
            return
        if at >= len(data):
            return


def check_zip_sizes(source: str | Path | IO[bytes], what: str) -> None:
    """Refuse (``CheckpointError``) a zip archive (``torch.save``'s format) a record of which
    declares more uncompressed bytes than the whole archive holds: torch's reader allocates the
    declared size before it inflates the record into it, and ``torch.save`` stores records
    uncompressed, so a real checkpoint never declares more than its file has. Not a zip archive,
    or a damaged one: left for the reader to refuse."""
    try:
        with zipfile.ZipFile(source) as archive:
            if isinstance(source, (str, Path)):
                size = os.stat(source).st_size
            else:
                source.seek(0, os.SEEK_END)
                size = source.tell()
            for info in archive.infolist():
                if info.file_size > size:
                    raise CheckpointError(
                        f"{what} is corrupt (crafted or damaged): its record {info.filename!r} "
                        f"declares {info.file_size} bytes uncompressed (file_size), the whole "
                        f"archive is {size} bytes; torch.save stores records uncompressed, so "
                        "no checkpoint declares more than its file holds"
                    )
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError):
        return
    finally:
        if not isinstance(source, (str, Path)):
            source.seek(0)


def check_declared_sizes(path: Path, what: str) -> None:
    """:func:`check_zip_sizes` for a zip archive, :func:`check_pickle_memo` over the pickles
    at the start of torch's legacy format (magic number, protocol, system info, data) for any
    other file: what ``torch.load`` allocates from a file before reading it, bounded by the
    file's size."""
    with open(path, "rb") as handle:
        head = handle.read(4)
        handle.seek(0)
        if head[:2] == b"PK":
            check_zip_sizes(handle, what)
        else:
            check_pickle_memo(handle, what, pickles=4)


# -- what a refused file holds ----------------------------------------------------------------------


@dataclass
class PickleReport:
    """What :func:`inspect_pickle` found: whether the file is a complete pickle (or torch zip
    archive holding one) and which globals (``module.name``) it refers to."""

    valid: bool
    globals: list[str] = field(default_factory=list)
    problem: str = ""

    def refused(self) -> list[str]:
        """The globals ``torch.load(weights_only=True)`` does not allow."""
        allowed = _weights_only_globals()
        return sorted({name for name in self.globals if name not in allowed})


class _Stub:
    """What the recording unpickler gives for every global: it accepts anything and does
    nothing, so no code of the file runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        return object.__new__(cls)

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return _Stub()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def add(self, value: Any) -> None:
        pass


class _RecordingUnpickler(pickle.Unpickler):
    """Walks a pickle without running it: every global resolves to :class:`_Stub` and is
    recorded."""

    def __init__(self, file: IO[bytes], names: list[str]) -> None:
        super().__init__(file)
        self.names = names

    def find_class(self, module: str, name: str) -> Any:
        self.names.append(f"{module}.{name}")
        return _Stub

    def persistent_load(self, pid: Any) -> Any:
        return _Stub()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def inspect_pickle(file: str | Path | bytes) -> PickleReport:
    """Whether ``file`` (a path or the bytes of a file or record) is a complete pickle, or a torch
    zip archive whose ``data.pkl`` is one, and which globals it names, found without running
    it. Tells a file that holds objects from a corrupt or foreign one."""
    try:
        if isinstance(file, bytes):
            return _inspect_stream(io.BytesIO(file))
        with open(file, "rb") as handle:
            return _inspect_stream(handle)
    except OSError as error:
        return PickleReport(False, problem=f"cannot be read: {error}")


def _inspect_stream(handle: IO[bytes]) -> PickleReport:
    head = handle.read(4)
    handle.seek(0)
    if head[:2] == b"PK":
        try:
            check_zip_sizes(handle, "the file")
        except CheckpointError as error:
            return PickleReport(False, problem=str(error).removeprefix("the file is "))
        try:
            with zipfile.ZipFile(handle) as archive:
                pickles = [n for n in archive.namelist() if n.split("/")[-1] == "data.pkl"]
                if not pickles:
                    return PickleReport(False, problem="a zip archive without data.pkl")
                data = archive.read(pickles[0])
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
            return PickleReport(False, problem=f"a damaged zip archive ({error})")
        return _scan(io.BytesIO(data), legacy=False)
    if not head:
        return PickleReport(False, problem="an empty file")
    return _scan(handle, legacy=True)


def _scan(handle: IO[bytes], legacy: bool) -> PickleReport:
    names: list[str] = []
    try:
        check_pickle_memo(handle, "the file", pickles=4 if legacy else 1)
    except CheckpointError as error:
        return PickleReport(False, problem=str(error).removeprefix("the file is "))
    try:
        first = _RecordingUnpickler(handle, names).load()
        if legacy and first == _LEGACY_MAGIC:
            # torch's legacy format: magic number, protocol, system info, then the data
            for _ in range(3):
                _RecordingUnpickler(handle, names).load()
    except Exception as error:
        return PickleReport(False, names, problem=f"not a complete pickle ({error})")
    return PickleReport(True, names)


def _weights_only_globals() -> set[str]:
    allowed: set[str] = set()
    try:
        from torch import _weights_only_unpickler

        allowed.update(_weights_only_unpickler._get_allowed_globals())
    except Exception:  # a torch without this private helper: report every global
        pass
    with contextlib.suppress(Exception):
        for item in torch.serialization.get_safe_globals():
            target = item[0] if isinstance(item, tuple) else item
            allowed.add(f"{target.__module__}.{target.__qualname__}")
    return allowed


def refused_or_corrupt(
    what: str,
    error: BaseException,
    weights_only: bool,
    path: Path | None = None,
    data: bytes | None = None,
    opt_out_helps: bool = True,
) -> CheckpointError:
    """The error for a file (or record ``what``) that ``torch.load`` could not read: it holds
    objects that the safe loader refuses (named, with the opt-out ``weights_only=False`` where
    that would read it), or it is corrupt or no checkpoint (said so, without the opt-out)."""
    source: bytes | Path | None = data if data is not None else path
    report = inspect_pickle(source) if source else None
    if weights_only and report is not None and report.valid:
        refused = report.refused()
        if refused:
            listed = ", ".join(refused[:5]) + (", ..." if len(refused) > 5 else "")
            advice = (
                " If you trust the file, load it with weights_only=False: that runs whatever "
                "code the file names."
                if opt_out_helps
                else " It cannot be read as a checkpoint: this place holds tensor data only."
            )
            return CheckpointError(
                f"{what} holds objects that weights_only=True refuses to unpickle ({listed})."
                + advice
            )
    cause = report.problem if report is not None and not report.valid else _short(error)
    return CheckpointError(
        f"{what} is not a checkpoint or is corrupt (truncated, overwritten, or another format): "
        f"{cause}"
    )


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # torch's own weights_only message suggests weights_only=False even for garbage: keep only
    # the line that says what the unpickler met
    detail = [line for line in text if "WeightsUnpickler error" in line or "Unsupported" in line]
    line = (detail or text or [""])[0]
    if "weights_only" in line:
        line = ""
    return f"{type(error).__name__}: {line[:300]}" if line else type(error).__name__


# -- directories ------------------------------------------------------------------------------------


class StagedDirectory:
    """A checkpoint directory being written under ``.NAME.tmp-<token>`` beside ``path``, held
    (:class:`Lease`) by the processes writing it; :meth:`publish` gives it the name ``path``.

    Rank zero :meth:`create`\\ s it (after removing stale temporaries of ``path``) and shares
    :attr:`token`; the others :meth:`join` it. All write into :attr:`directory`, release their
    lease once their part is written (:meth:`release`), and rank zero publishes once all parts
    are written (or :meth:`discard`\\ s it after a failure)."""

    def __init__(self, path: Path, token: str, held: Lease | None) -> None:
        self.path = path
        self.token = token
        self.directory = path.with_name(f".{path.name}.tmp-{token}")
        self._lease = held

    @classmethod
    def create(cls, path: str | Path) -> StagedDirectory:
        path = Path(path)
        _make_parent(path, "save the checkpoint to")
        if path.exists() and not path.is_dir():
            raise CheckpointError(
                f"cannot save a sharded checkpoint to {str(path)!r}: it is a file; sharded "
                "checkpoints are directories (pass another path)"
            )
        remove_stale(path)
        for _ in range(5):
            token = uuid.uuid4().hex[:12]
            directory = path.with_name(f".{path.name}.tmp-{token}")
            try:
                directory.mkdir()
            except FileExistsError:
                continue
            except OSError as error:
                raise CheckpointError(
                    f"could not save the checkpoint to {str(path)!r}: "
                    f"{describe_os_error(error, path.parent)}. The previous checkpoint there, "
                    "if any, is unchanged"
                ) from error
            held = lease(directory)
            if held is not None:
                return cls(path, token, held)
        raise CheckpointError(f"could not create a temporary directory beside {str(path)!r}")

    @classmethod
    def join(cls, path: str | Path, token: str) -> StagedDirectory:
        """The directory rank zero created, held by this process too (best effort: if it
        cannot be opened, writing into it fails and says why)."""
        staged = cls(Path(path), token, None)
        staged._lease = lease(staged.directory)
        return staged

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def publish(self) -> None:
        """Give the complete directory the name ``path`` (:func:`replace_directory`)."""
        try:
            replace_directory(self.directory, self.path, token=self.token)
        finally:
            self.release()

    def discard(self) -> None:
        """Delete the directory (after a failed save; the old checkpoint stays)."""
        try:
            _remove(self.directory)
            _remove(self.path.with_name(f".{self.path.name}.new-{self.token}"))
        finally:
            self.release()


def replace_directory(temporary: str | Path, path: str | Path, token: str | None = None) -> None:
    """Give the complete directory ``temporary`` the name ``path``, for checkpoints that are
    directories (one file per process, as sharded strategies write them).

    Write the checkpoint into ``temporary``, a sibling of ``path`` (the same file system, so that
    renames are atomic), and call this once it is complete, from one process. ``temporary`` is
    first renamed to ``.NAME.new-*`` (complete, waiting for its name); whatever is at ``path``
    (an old checkpoint directory, a file, a link) is renamed aside to ``.NAME.old-*`` and deleted
    only once the new one has taken its name. A crash therefore leaves at ``path`` the old
    checkpoint or the new one, or (killed between the two renames) nothing at ``path`` and both
    beside it, which :func:`resolve` puts back; an error in the second rename puts the old one
    back and is raised, leaving the new one under ``.NAME.new-*`` for the next save to delete.
    """
    temporary = Path(temporary)
    path = Path(path)
    token = token or uuid.uuid4().hex[:12]
    new = path.with_name(f".{path.name}.new-{token}")
    os.replace(temporary, new)
    old = None
    held = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{token}")
        # held while aside, so that no other save's cleanup deletes it before it is back or gone
        held = lease(path) if not path.is_symlink() else None
        os.replace(path, old)
    try:
        try:
            os.replace(new, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)  # put the old checkpoint back
            raise
        fsync_directory(path.parent)
        if old is not None:
            _remove(old)
    finally:
        if held is not None:
            held.release()


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry to disk, so that a rename inside it survives a crash (a no-op
    where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
