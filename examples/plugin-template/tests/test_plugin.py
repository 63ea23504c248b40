"""Unit tests of the plugin's own pieces; tests/test_conformance.py runs switchyard's kit."""

from __future__ import annotations

import torch
from torch import nn

from switchyard.registry import PluginRegistry
from switchyard_example.accelerator import HOST_CORES, CoreShareAccelerator, core_share


def test_entries_are_registered_by_this_distribution() -> None:
    registry = PluginRegistry()
    for kind, name in (
        ("accelerator", "example_cpu"),
        ("strategy", "example_allreduce"),
        ("strategy", "example_allreduce_spawn"),
    ):
        registration = registry.get(kind, name)
        assert registration is not None, f"{kind} {name} is not registered"
        assert registration.plugin.distribution == "switchyard-example"


def test_discovery_does_not_import_the_implementations() -> None:
    # the kit measures it in a fresh interpreter; here: the hooks name implementations as
    # "module:attr" strings, imported only when a user selects them
    import switchyard_example.plugin as plugin

    entries = [*plugin.switchyard_accelerators(), *plugin.switchyard_strategies()]
    assert all(isinstance(e.factory, str) for e in entries)


def test_core_shares_are_disjoint_and_cover_the_cores() -> None:
    cores = [0, 1, 2, 3, 4, 5, 6, 7]
    shares = [core_share(cores, rank, 4) for rank in range(4)]
    assert shares == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # more processes than cores: one core each, shared round-robin
    assert [core_share([0, 1], rank, 3) for rank in range(3)] == [[0], [1], [0]]


def test_setup_device_sizes_threads_and_teardown_restores_them(monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(len(HOST_CORES)))
    before = torch.get_num_threads()
    accelerator = CoreShareAccelerator()
    accelerator.setup_device(torch.device("cpu"))
    assert torch.get_num_threads() == 1
    assert nn.Linear(2, 2)(torch.ones(1, 2)).shape == (1, 2)
    accelerator.teardown()
    assert torch.get_num_threads() == before
