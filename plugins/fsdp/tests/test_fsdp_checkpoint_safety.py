"""FSDP checkpoints that a ported script writes, and sharded saves that fail: real processes
over gloo (fsdp_checkpoint_checks.py under torchrun), real size-limited and read-only tmpfs
mounts where this process may mount them (root), read in this process without FSDP.

The crafted-pickle and SIGKILL suites, which run FSDP with every other strategy, are
tests/test_checkpoint_safety.py and tests/test_checkpoint_kills.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from switchyard import checkpoint
from switchyard.testing.subprocesses import child_environment, run

HERE = Path(__file__).parent
TIMEOUT = 240


def _mount(where: Path, size: str, read_only: bool = False) -> bool:
    """A tmpfs at ``where`` (read-only, holding a directory ``ckpt``, if asked); ``False`` where
    this process may not mount."""
    where.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    if subprocess.run(command, capture_output=True, timeout=30).returncode != 0:
        return False
    if read_only:
        (where / "ckpt").mkdir()
        (where / "ckpt" / "meta.pt").write_bytes(b"the previous checkpoint")
        remount = ["mount", "-o", "remount,ro", str(where)]
        if subprocess.run(remount, capture_output=True, timeout=30).returncode != 0:
            _unmount(where)
            return False
    return True


def _unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


@contextlib.contextmanager
def _mounts(root: Path) -> Iterator[tuple[Path | None, Path | None]]:
    small, read_only = root / "small", root / "ro"
    have_small = _mount(small, "1m")
    have_ro = _mount(read_only, "1m", read_only=True)
    try:
        yield (small if have_small else None, read_only if have_ro else None)
    finally:
        for where, mounted in ((small, have_small), (read_only, have_ro)):
            if mounted:
                _unmount(where)


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("fsdp-checkpoints")
    with _mounts(tmp_path_factory.mktemp("mounts")) as (small, read_only):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",
            str(HERE / "fsdp_checkpoint_checks.py"),
            str(out),
            str(small or "-"),
            str(read_only or "-"),
        ]
        finished = run(
            command,
            timeout=TIMEOUT,
            log=out / "job.log",
            env=child_environment({"OMP_NUM_THREADS": "1"}),
            cwd=HERE,
        )
        assert finished.returncode == 0, f"{finished.describe()}:\n{finished.tail(80)}"
        report = json.loads((out / "report.json").read_text())
        listing = {
            "small": sorted(os.listdir(small)) if small else None,
            "small_ckpt": checkpoint.load(small / "ckpt")["step"] if small else None,
            "ro": sorted(os.listdir(read_only)) if read_only else None,
            "ro_ckpt": (read_only / "ckpt" / "meta.pt").read_bytes() if read_only else None,
        }
        yield {"out": out, "report": report, "listing": listing, "small": small, "ro": read_only}


@pytest.mark.distributed
def test_a_plain_dict_of_dtensor_shards_is_saved_completely(checks: dict[str, Any]) -> None:
    """``runtime.save(path, {"model": model.state_dict()})``: every process's shards, read here
    in one process without FSDP, equal the gathered model (not rank 0's shards alone)."""
    out = checks["out"]
    reference = torch.load(out / "reference.pt", weights_only=True)
    loaded = checkpoint.load(out / "plain")
    assert loaded["step"] == 5
    assert sorted(loaded["model"]) == sorted(reference)
    for name, tensor in reference.items():
        assert type(loaded["model"][name]) is torch.Tensor
        assert loaded["model"][name].shape == tensor.shape  # the full shape, not a shard's
        assert torch.equal(loaded["model"][name], tensor), name
    # every process wrote its shards
    assert sorted(p.name for p in (out / "plain").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]


@pytest.mark.distributed
def test_a_plain_dict_of_dtensors_loads_back_in_place(checks: dict[str, Any]) -> None:
    report = checks["report"]
    assert report["differed_before"]
    assert report["in_place_max_diff"] == 0.0
    assert report["in_place_step"] == 5


@pytest.mark.distributed
def test_full_state_dict_type_gathers_dtensors_in_plain_values(checks: dict[str, Any]) -> None:
    out = checks["out"]
    reference = torch.load(out / "reference.pt", weights_only=True)
    saved = torch.load(out / "full_plain.pt", weights_only=True)
    assert saved["step"] == 5
    for name, tensor in reference.items():
        assert type(saved["model"][name]) is torch.Tensor
        assert torch.equal(saved["model"][name], tensor), name


@pytest.mark.distributed
def test_a_full_disk_fails_the_sharded_save_on_every_rank_and_keeps_the_old(
    checks: dict[str, Any],
) -> None:
    if checks["small"] is None:
        pytest.skip("mounting a size-limited tmpfs needs root")
    report, listing = checks["report"], checks["listing"]
    path = str(checks["small"] / "ckpt")
    for rank in (0, 1):
        message = report[f"disk_full_{rank}"]
        assert message is not None, f"rank {rank} did not fail"
        assert path in message
        assert "the file system is full" in message
        assert ".tmp-" not in message  # the checkpoint's name, not the temporary's
    assert listing["small"] == ["ckpt"]  # the partial directory is gone
    assert listing["small_ckpt"] == 1  # the old checkpoint survives


@pytest.mark.distributed
def test_a_read_only_file_system_fails_the_sharded_save_on_every_rank(
    checks: dict[str, Any],
) -> None:
    if checks["ro"] is None:
        pytest.skip("mounting a read-only tmpfs needs root")
    report, listing = checks["report"], checks["listing"]
    for rank in (0, 1):
        message = report[f"read_only_{rank}"]
        assert message is not None, f"rank {rank} did not fail"
        assert str(checks["ro"] / "ckpt") in message
        assert "read-only" in message
    assert listing["ro"] == ["ckpt"]
    assert listing["ro_ckpt"] == b"the previous checkpoint"
