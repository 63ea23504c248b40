"""Writing and reading checkpoint files so that a crash never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
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
