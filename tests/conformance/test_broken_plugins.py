"""A kit that cannot fail proves nothing: run it against plugins broken on purpose and check that
the specific check fails, saying why, while the checks the bug does not touch pass.

Each test's kit session (its ``kit_session`` marker) is started ahead by conftest.py."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow

KitRun = Any
"""The ``kit`` fixture's ``KitRun`` (tests/conformance/conftest.py)."""


@pytest.mark.distributed
@pytest.mark.kit_session(
    "--switchyard-strategy",
    "ddp_averaging_sum",
    "--switchyard-devices",
    "2",
    pythonpath=["broken_site"],
)
def test_all_reduce_that_averages_a_sum_fails_the_sum_check(kit: KitRun) -> None:
    assert kit.returncode == 1, kit.output
    assert kit.outcome("strategy.all_reduce[sum]") == "failed"
    message = kit.message("strategy.all_reduce[sum]")
    assert "all_reduce(op='sum') returned [1.5, 15.0, -1.5] on rank 0" in message
    assert "expected [3.0, 30.0, -3.0]" in message
    assert "that is the mean, not the sum" in message
    # the bug is pinpointed: everything else about the strategy conforms
    failed = [name for name, outcome in kit.outcomes().items() if outcome != "passed"]
    assert failed == ["strategy.all_reduce[sum]"], kit.output
    assert kit.report["summary"]["result"] == "failed"
    assert kit.report["selected"]["strategy"]["distribution"] == "switchyard-averaging-sum"
    assert "all_reduce(op='sum') returned" in kit.output


# only the checks asserted on below: the discovery and training checks start processes and
# import torch._dynamo, and the test says nothing of them
@pytest.mark.kit_session(
    "--switchyard-accelerator",
    "lossy_cpu",
    "--switchyard-precision",
    "32-true",
    "-k",
    "accelerator.py and (round_trip or availability or parse_devices) or entries.py and factory",
    pythonpath=["broken_site"],
)
def test_device_that_loses_precision_fails_the_round_trip(kit: KitRun) -> None:
    assert kit.returncode == 1, kit.output
    for dtype in ("float32", "float64"):
        assert kit.outcome(f"accelerator.round_trip[{dtype}]") == "failed"
    message = kit.message("accelerator.round_trip[float32]")
    assert "copied to cpu and back did not come back bit-exact" in message
    assert "elements differ" in message
    # integers and the class's own answers are untouched by the bug
    for check in (
        "accelerator.round_trip[int64]",
        "accelerator.round_trip[bool]",
        "accelerator.availability",
        "accelerator.parse_devices",
        "entries.factory[accelerator:lossy_cpu]",
    ):
        assert kit.outcome(check) == "passed", kit.output


@pytest.mark.kit_session("--switchyard-accelerator", "ghost", pythonpath=["broken_site"])
def test_factory_that_cannot_be_imported_fails_and_nothing_passes_on_it(kit: KitRun) -> None:
    assert kit.returncode == 1, kit.output
    assert kit.outcome("entries.factory[accelerator:ghost]") == "failed"
    message = kit.message("entries.factory[accelerator:ghost]")
    assert (
        "factory 'switchyard_ghost_backend.accelerator:GhostAccelerator' cannot be imported"
        in message
    )
    assert "No module named 'switchyard_ghost_backend'" in message
    assert "plugin ghost (switchyard-ghost 1.0.0)" in message
    # what does not need the factory still passes
    assert kit.outcome("entries.name[accelerator:ghost]") == "passed"
    assert kit.outcome("entries.description[accelerator:ghost]") == "passed"
    assert kit.outcome("entries.discovery_is_light[ghost]") == "passed"
    # every hardware check fails with the import error: none is passed, none skipped as absent
    hardware = {n: o for n, o in kit.outcomes().items() if n.startswith("accelerator.")}
    assert hardware
    assert set(hardware.values()) == {"failed"}
    assert "cannot be imported" in kit.message("accelerator.round_trip[float32]")


@pytest.mark.kit_session(
    "--switchyard-accelerator",
    "absent_npu",
    "--switchyard-strategy",
    "ddp",
    pythonpath=["broken_site"],
)
def test_absent_hardware_is_skipped_with_its_reason_never_passed(kit: KitRun) -> None:
    # skips are not failures: pytest succeeds, the report says the run is incomplete
    assert kit.returncode == 0, kit.output
    assert kit.report["summary"]["result"] == "incomplete"
    outcomes = kit.outcomes()
    # selection's refusals are asked of the accelerator's declarations: no device needed
    refusals = {n: o for n, o in outcomes.items() if n.startswith("strategy.refused_")}
    assert set(refusals.values()) == {"passed"}, outcomes
    hardware = {
        n: o
        for n, o in outcomes.items()
        if n.startswith(("accelerator.", "strategy."))
        and n != "accelerator.availability"
        and n not in refusals
    }
    assert hardware, outcomes
    assert set(hardware.values()) == {"skipped"}, outcomes
    assert "no Absent NPU card is plugged in" in kit.message("accelerator.round_trip[float32]")
    assert "no Absent NPU card is plugged in" in kit.message("strategy.all_reduce[sum]")
    # answering consistently that there is no device needs no device
    assert outcomes["accelerator.availability"] == "passed"
    assert kit.report["devices"]["available"] is False


@pytest.mark.kit_session(
    "--switchyard-accelerator",
    "example_cpu",
    "--switchyard-strategy",
    "example_allreduce",
    "--switchyard-devices",
    "100000",
    "-k",
    "strategy.py",
)
def test_too_few_devices_skips_the_strategy_checks(kit: KitRun) -> None:
    assert kit.returncode == 0, kit.output
    strategy = {n: o for n, o in kit.outcomes().items() if n.startswith("strategy.")}
    # the checks of the job are skipped; selection's refusals start no process and still run
    refusals = {n: strategy.pop(n) for n in list(strategy) if n.startswith("strategy.refused_")}
    assert refusals["strategy.refused_without_backend[example_allreduce]"] == "passed"
    assert set(refusals.values()) == {"passed"}
    assert strategy
    assert set(strategy.values()) == {"skipped"}
    assert "asked for 100000 processes" in kit.message("strategy.barrier")
