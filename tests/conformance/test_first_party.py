"""Every first-party plugin passes the conformance kit, for real: the CPU accelerator, core's
single_device strategy, and DDP on two processes. Each new plugin adds its run here (a
``kit_session`` marker: conftest.py starts the session ahead)."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow


def assert_conformant(kit: Any) -> None:
    kit.assert_conformant()  # KitRun.assert_conformant (conftest.py), shared with other files


@pytest.mark.distributed
@pytest.mark.kit_session(
    "--switchyard-accelerator",
    "cpu",
    "--switchyard-strategy",
    "ddp",
    "--switchyard-devices",
    "2",
)
def test_cpu_accelerator_and_ddp_on_two_processes(kit: Any) -> None:
    assert_conformant(kit)
    checks = kit.checks()
    families = {c["family"] for c in checks.values()}
    assert families == {"entries", "accelerator", "precision", "strategy"}
    for name in (
        "entries.discovery_is_light[cpu]",
        "entries.factory[strategy:ddp_spawn]",
        "accelerator.round_trip[bfloat16]",
        "accelerator.autocast[bf16-mixed]",
        "accelerator.auto_devices",
        "accelerator.optimizer_created_before_setup",
        "accelerator.seeding",
        "precision.state_round_trip[16-mixed]",
        "strategy.training_matches_single_process",
        "strategy.optimizer_steps_the_module_parameters",
        "strategy.refused_without_backend[ddp]",
        "strategy.refused_without_backend[ddp_fork]",
        "strategy.all_reduce[sum]",
        "strategy.broadcast",
        "strategy.no_backward_sync",
        "strategy.checkpoint_round_trip",
    ):
        assert checks[name]["outcome"] == "passed"
    # 'auto' is one process on the CPU: the report says so, and that 2 were checked instead
    auto = checks["accelerator.auto_devices"]["details"]
    assert "devices='auto' means one device here" in auto["note"]
    assert [s["strategy"] for s in auto["selections"]] == ["single_device", "ddp"]
    # DDP declares no sharding: no check of a refusal for it
    assert not [n for n in checks if n.startswith("strategy.refused_without_sharding")]
    # two real processes ran the strategy checks
    processes = checks["strategy.processes"]["details"]
    assert sorted(processes["devices"]) == ["0", "1"]
    assert processes["selected"]["strategy"] == "ddp"
    report = kit.report
    assert report["versions"]["torch"]
    assert report["versions"]["switchyard"]
    plugins = {p["name"]: p["distribution"] for p in report["plugins"]}
    assert plugins == {"cpu": "switchyard-cpu", "ddp": "switchyard-ddp"}
    assert report["selected"]["strategy_processes"] == 2
    assert report["devices"]["available"] is True
    assert report["devices"]["names"]


@pytest.mark.distributed
@pytest.mark.kit_session("--switchyard-strategy", "single_device")
def test_single_device_strategy(kit: Any) -> None:
    assert_conformant(kit)
    assert kit.report["selected"]["strategy_processes"] == 1
    # the strategy's plugin is core's built-in one: all of its entries are checked
    assert kit.report["plugins"][0]["name"] == "builtin"
    assert kit.outcome("entries.factory[environment:slurm]") == "passed"
    assert kit.outcome("strategy.checkpoint_round_trip") == "passed"
