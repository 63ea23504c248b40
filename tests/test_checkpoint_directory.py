"""``switchyard.checkpoint.replace_directory``: a complete checkpoint directory takes its final
name without a moment where ``path`` names a partial checkpoint or nothing that was there before
it could be put back. Real directories on disk (pytest's ``tmp_path``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from switchyard import checkpoint


def _new_checkpoint(parent: Path, name: str, content: str) -> Path:
    # as a sharded strategy writes it: a hidden sibling of the final path
    temporary = parent / name
    temporary.mkdir()
    (temporary / content).write_text(content)
    return temporary


def _left_aside(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".old-" in p.name)


def test_replaces_an_existing_checkpoint_directory(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "old").write_text("old")
    (path / "nested").mkdir()
    (path / "nested" / "shard").write_text("old shard")
    new = _new_checkpoint(tmp_path, ".ckpt.tmp-1", "new")

    checkpoint.replace_directory(new, path)

    assert [p.name for p in path.iterdir()] == ["new"]
    assert (path / "new").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert _left_aside(tmp_path) == []


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    path.write_text("a single-file checkpoint")
    new = _new_checkpoint(tmp_path, ".ckpt.tmp-1", "new")

    checkpoint.replace_directory(str(new), str(path))  # str paths too

    assert path.is_dir()
    assert [p.name for p in path.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_takes_a_free_name(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    new = _new_checkpoint(tmp_path, ".ckpt.tmp-1", "new")

    checkpoint.replace_directory(new, path)

    assert [p.name for p in path.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_failure_in_the_second_rename_puts_the_old_checkpoint_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "old").write_text("old")
    new = _new_checkpoint(tmp_path, ".ckpt.tmp-2", "new")
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        renames.append((Path(src), Path(dst)))
        if Path(src).name.startswith(".ckpt.new-"):
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        checkpoint.replace_directory(new, path)

    # the complete new one was marked complete (renamed to .new-*), the old one moved aside, the
    # new one failed to take its name, and the old one is back
    complete = renames[0][1]
    aside = renames[1][1]
    assert complete.parent == aside.parent == tmp_path
    assert complete.name.startswith(".ckpt.new-")
    assert aside.name.startswith(".ckpt.old-")
    assert renames == [(new, complete), (path, aside), (complete, path), (aside, path)]
    assert [p.name for p in path.iterdir()] == ["old"]
    assert (path / "old").read_text() == "old"
    # the complete new one is left beside it; nothing is left aside
    assert sorted(p.name for p in tmp_path.iterdir()) == [complete.name, "ckpt"]
    assert _left_aside(tmp_path) == []
    # ... and the next save of the name deletes it: no process holds it
    monkeypatch.undo()
    assert checkpoint.remove_stale(path) == [complete]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
