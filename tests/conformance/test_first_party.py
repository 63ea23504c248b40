"""Every first-party plugin passes the conformance kit, for real: the CPU accelerator, core's
single_device strategy, and DDP on two processes. Each new plugin adds its run here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.slow

RunKit = Callable[..., Any]


def assert_conformant(kit: Any) -> None:
    not_passed = {
        n: (c["outcome"], c["message"]) for n, c in kit.checks().items() if c["outcome"] != "passed"
    }
    assert not not_passed, f"{not_passed}\n{kit.output}"
    assert kit.returncode == 0, kit.output
    summary = kit.report["summary"]
    assert summary["result"] == "passed"
    assert summary["failed"] == summary["skipped"] == summary["not run"] == 0
    assert summary["passed"] == summary["total"] > 0


@pytest.mark.distributed
def test_cpu_accelerator_and_ddp_on_two_processes(run_kit: RunKit) -> None:
    kit = run_kit(
        "--switchyard-accelerator",
        "cpu",
        "--switchyard-strategy",
        "ddp",
        "--switchyard-devices",
        "2",
    )
    assert_conformant(kit)
    checks = kit.checks()
    families = {c["family"] for c in checks.values()}
    assert families == {"entries", "accelerator", "precision", "strategy"}
    for name in (
        "entries.discovery_is_light[cpu]",
        "entries.factory[strategy:ddp_spawn]",
        "accelerator.round_trip[bfloat16]",
        "accelerator.autocast[bf16-mixed]",
        "precision.state_round_trip[16-mixed]",
        "strategy.training_matches_single_process",
        "strategy.all_reduce[sum]",
        "strategy.broadcast",
        "strategy.no_backward_sync",
        "strategy.checkpoint_round_trip",
    ):
        assert checks[name]["outcome"] == "passed"
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
def test_single_device_strategy(run_kit: RunKit) -> None:
    kit = run_kit("--switchyard-strategy", "single_device")
    assert_conformant(kit)
    assert kit.report["selected"]["strategy_processes"] == 1
    # the strategy's plugin is core's built-in one: all of its entries are checked
    assert kit.report["plugins"][0]["name"] == "builtin"
    assert kit.outcome("entries.factory[environment:slurm]") == "passed"
    assert kit.outcome("strategy.checkpoint_round_trip") == "passed"
