"""A load allocates no more than the files it reads can justify: a crafted checkpoint declaring a
huge size fails fast with a CheckpointError naming the file, the field, the declared value and
what the file holds, and the loading process stays within :data:`EXTRA_RSS_BOUND` of memory.

The crafted-pickle suite (tests/test_checkpoint_safety.py) once made a loading process grow to
12 GB: a ``garbage`` variant (random bytes) of a file read by the C unpickler (a sharded
checkpoint's ``.metadata``, or any refused file that :func:`switchyard.checkpoint.inspect_pickle`
walks) happened to hold ``LONG_BINPUT`` with a huge index, and the C unpickler grows its memo to
twice the index and fills it: 16 bytes per index, 4 GiB for the 7-byte pickle used here. About
0.7 % of such random files did it (1323 of 200,000 draws reached a 2 GiB cap).

Each load runs in a child process with its address space capped (``RLIMIT_AS``, the baseline plus
:data:`CAP_EXTRA`, so that a regression fails here instead of taking the machine's memory); the
child reports the growth of its peak resident set (``ru_maxrss``) during the load.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

EXTRA_RSS_BOUND = 1 << 30
"""The most a refused load may add to the loading process's peak resident set."""

CAP_EXTRA = 3 << 30
"""The child's address-space cap above what it uses before the load."""

MEMO_INDEX = 1 << 28
"""The memo index the crafted pickle declares: 4 GiB of memo for the C unpickler."""

MEMO_BOMB = b"N" + b"r" + struct.pack("<I", MEMO_INDEX) + b"."
"""``None``, then ``LONG_BINPUT 2**28``, then ``STOP``: 7 bytes."""

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from switchyard import checkpoint
    from switchyard.errors import CheckpointError
    import torch.distributed.checkpoint  # imported before the baseline is taken

    def usage() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[0]) * resource.getpagesize()

    cap = usage() + int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        checkpoint.load(sys.argv[1])
        result = {"raised": None}
    except CheckpointError as error:
        result = {"raised": "CheckpointError", "message": str(error)}
    except BaseException as error:
        result = {"raised": type(error).__name__, "message": str(error)[:500]}
    result["extra_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps(result))
    """
)


def _load_in_child(path: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(CAP_EXTRA)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _sharded_directory(root: Path) -> Path:
    """A real one-process DCP checkpoint directory, as a plain DCP save writes it."""
    import torch.distributed.checkpoint as dcp

    directory = root / "ckpt"
    dcp.save({"w": torch.arange(6.0)}, checkpoint_id=str(directory), no_dist=True)
    return directory


def _metadata_bomb(root: Path) -> tuple[Path, Path]:
    directory = _sharded_directory(root)
    (directory / ".metadata").write_bytes(MEMO_BOMB)
    return directory, directory / ".metadata"


LENGTH_BOMB = b"\x96" + struct.pack("<Q", 1 << 31) + b"x"
"""``BYTEARRAY8`` declaring 2 GiB that the file does not hold: the C unpickler allocates the
declared length before it reads."""


def _metadata_length_bomb(root: Path) -> tuple[Path, Path]:
    directory = _sharded_directory(root)
    (directory / ".metadata").write_bytes(LENGTH_BOMB)
    return directory, directory / ".metadata"


def _single_file_bomb(root: Path) -> tuple[Path, Path]:
    # torch.load refuses it with its own (pure Python) unpickler; the refusal's diagnosis
    # (inspect_pickle) walked it with the C unpickler
    file = root / "model.pt"
    file.write_bytes(MEMO_BOMB)
    return file, file


def _zip_record_bomb(root: Path) -> tuple[Path, Path]:
    # a record declaring far more uncompressed bytes than the archive: deflated zeros
    file = root / "model.pt"
    torch.save({"w": torch.ones(3)}, file)
    with (
        zipfile.ZipFile(file, "a", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("model/data/1", "w", force_zip64=True) as record,
    ):
        for _ in range(64):
            record.write(bytes(1 << 20))
    return file, file


@pytest.mark.parametrize(
    ("craft", "field", "declared"),
    [
        (_metadata_bomb, "memo entry", str(MEMO_INDEX)),
        (_metadata_length_bomb, "length field", str(1 << 31)),
        (_single_file_bomb, "memo entry", str(MEMO_INDEX)),
        (_zip_record_bomb, "file_size", str(64 << 20)),
    ],
    ids=["sharded-metadata", "sharded-metadata-length", "single-file", "zip-record"],
)
def test_a_declared_size_beyond_the_file_fails_fast_within_the_memory_bound(
    tmp_path: Path, craft: object, field: str, declared: str
) -> None:
    path, crafted = craft(tmp_path)  # type: ignore[operator]
    result = _load_in_child(path)
    assert result["raised"] == "CheckpointError", result
    message = str(result["message"])
    assert repr(str(crafted)) in message
    assert field in message
    assert declared in message
    assert str(crafted.stat().st_size) in message or "the file has" in message
    assert "weights_only=False" not in message  # corrupt, not objects: no opt-out offered
    assert int(result["extra_rss"]) < EXTRA_RSS_BOUND, result  # type: ignore[call-overload]


def test_a_memo_that_grows_in_order_is_accepted(tmp_path: Path) -> None:
    """The bound refuses only what no pickler writes: a real checkpoint with many memoized
    objects (protocol 2, which numbers them with BINPUT/LONG_BINPUT) loads."""
    file = tmp_path / "many.pt"
    state = {f"entry{i}": {"step": i, "name": f"n{i}"} for i in range(400)}
    torch.save(state, file, pickle_protocol=2)
    from switchyard import checkpoint

    assert checkpoint.load(file) == state


def test_the_memo_check_names_the_opcode_and_its_position() -> None:
    from switchyard import checkpoint
    from switchyard.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"LONG_BINPUT at byte 1\) after 0 entries"):
        checkpoint.check_pickle_memo(MEMO_BOMB, "'x'")
