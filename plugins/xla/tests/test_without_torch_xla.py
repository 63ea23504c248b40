"""Without torch_xla (the default environment) the XLA entries are listed, not usable, and
selecting them says why before anything runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from switchyard import PluginRegistry, Runtime, SelectionError

sys.path.insert(0, str(Path(__file__).parent))
from xla_problems import HAS_TORCH_XLA

pytestmark = pytest.mark.skipif(HAS_TORCH_XLA, reason="torch_xla is installed here")


def test_entries_are_listed_and_need_torch_xla() -> None:
    registry = PluginRegistry()
    for kind, name in (
        ("accelerator", "xla"),
        ("strategy", "single_xla"),
        ("strategy", "xla"),
        ("strategy", "xla_spmd"),
    ):
        assert name in registry.names(kind)
        registration = next(r for r in registry.registrations(kind) if r.entry.name == name)
        assert registration.entry.missing_requirements() == ("torch_xla",)


def test_selecting_xla_names_the_missing_module() -> None:
    with pytest.raises(SelectionError, match="torch_xla"):
        Runtime(accelerator="xla")


def test_auto_does_not_pick_xla() -> None:
    assert Runtime(accelerator="auto", devices=1).plan.names["accelerator"] != "xla"
