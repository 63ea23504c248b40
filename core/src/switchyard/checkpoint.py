"""Writing and reading checkpoints so that a crash never leaves a half-written one behind: single
files (:func:`atomic_save`, :func:`load_file`) and directories (:func:`replace_directory`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from switchyard.errors import CheckpointError


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``. A crash at any point leaves either the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise CheckpointError(
            f"cannot save checkpoint to {str(path)!r}: it is a directory; pass a file path "
            "such as 'checkpoints/last.pt'"
        )
    # same directory, so os.replace is a rename within one file system. Created with open()
    # (exclusive) rather than tempfile.mkstemp, whose files are private (0600): the checkpoint
    # gets the permissions torch.save would have given it (0666 less the umask)
    tmp_name = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    handle = open(tmp_name, "xb")  # noqa: SIM115 (closed by the with below)
    try:
        with handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_directory(path.parent)
    return path


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
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:
        if weights_only and "weights_only" in str(error):
            raise CheckpointError(
                f"{str(path)!r} holds objects that weights_only=True refuses to unpickle "
                f"({error.__class__.__name__}). If you trust the file, load it with "
                "weights_only=False."
            ) from error
        raise CheckpointError(f"could not read checkpoint {str(path)!r}: {error}") from error
    if not isinstance(loaded, dict):
        raise CheckpointError(
            f"{str(path)!r} holds a {type(loaded).__name__}, not the dict runtime.save writes"
        )
    return loaded


def replace_directory(temporary: str | Path, path: str | Path) -> None:
    """Give the complete directory ``temporary`` the name ``path``, for checkpoints that are
    directories (one file per process, as sharded strategies write them).

    Write the checkpoint into ``temporary``, a sibling of ``path`` (the same file system, so that
    renames are atomic), and call this once it is complete, from one process. Whatever is at
    ``path`` (an old checkpoint directory, a file, a link) is first renamed aside to
    ``.NAME.old-*`` beside it and deleted only once ``temporary`` has taken its name. A crash
    therefore leaves at ``path`` the old checkpoint or the new one, never a partial one (after a
    crash between the two renames, the old one waits under ``.NAME.old-*``); an error in the
    second rename puts the old one back and is raised.
    """
    temporary = Path(temporary)
    path = Path(path)
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(path, old)
    try:
        os.replace(temporary, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)  # put the old checkpoint back
        raise
    fsync_directory(path.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


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
