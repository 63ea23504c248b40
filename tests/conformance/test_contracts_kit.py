"""The contract test plugins of ``tests/plugins/switchyard_contract`` pass the conformance kit, run
as a vendor runs it on an installed plugin: the accelerator ``fresh_params_cpu``, whose module
moves create new ``Parameter`` objects (as PrivateUse1 devices and XLA do), with core's
``single_device`` strategy; and the strategy ``engine``, which owns precision, backward and the
optimizer step (as DeepSpeed does). tests/test_contracts.py shows the same contracts in process.

The plugin is installed as a distribution: a ``*.dist-info`` with the entry point
``contract = switchyard_contract.plugin`` in a temporary folder, which goes on ``PYTHONPATH``
with ``tests/plugins`` (where the package is), so that the kit's processes and its strategy
job's discover it as they would a pip-installed plugin (the ``contract_site`` fixture of
conftest.py, which also starts the ``kit_session`` of each test ahead).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

RunKit = Callable[..., Any]

DISTRIBUTION = "switchyard-contract"
"""What conftest.py's ``contract_site`` installs."""

NO_REPOINTING = '''
    """A pytest plugin for the kit's session that stops the runtime from re-pointing optimizers
    at the parameters a module holds after setup (a regression of core)."""
    from switchyard.parameters import ParameterNames

    ParameterNames.repoint = lambda self, optimizer, module=None: 0
'''


def _plugins(kit: Any) -> dict[str, Any]:
    return {p["name"]: p["distribution"] for p in kit.report["plugins"]}


@pytest.mark.distributed
@pytest.mark.kit_session(
    "--switchyard-accelerator",
    "fresh_params_cpu",
    "--switchyard-strategy",
    "single_device",
    pythonpath=["contract_site"],
)
def test_accelerator_whose_moves_replace_parameters_passes(kit: Any) -> None:
    kit.assert_conformant()  # as test_first_party.py's assert_conformant
    checks = kit.checks()
    assert {c["family"] for c in checks.values()} == {
        "entries",
        "accelerator",
        "precision",
        "strategy",
    }
    assert _plugins(kit) == {"contract": DISTRIBUTION, "builtin": "switchyard"}
    assert kit.report["selected"]["hardware_accelerator"]["name"] == "fresh_params_cpu"
    # the check is not vacuous: setup really replaced every parameter, and the optimizer
    # created before it trains the new ones
    moved = checks["accelerator.optimizer_created_before_setup"]["details"]
    assert moved["parameters_replaced_by_setup"] == 4
    for name in (
        "entries.discovery_is_light[contract]",
        "entries.factory[strategy:engine]",
        "accelerator.seeding",
        "accelerator.auto_devices",
        "precision.parameter_and_output_dtypes[bf16-true]",
        "strategy.optimizer_steps_the_module_parameters",
        "strategy.training_matches_single_process",
        "strategy.checkpoint_round_trip",
    ):
        assert checks[name]["outcome"] == "passed", name


@pytest.mark.distributed
@pytest.mark.kit_session("--switchyard-strategy", "engine", pythonpath=["contract_site"])
def test_strategy_whose_engine_owns_the_step_passes(kit: Any) -> None:
    kit.assert_conformant()  # as test_first_party.py's assert_conformant
    report = kit.report
    assert _plugins(kit) == {"contract": DISTRIBUTION}
    assert report["selected"]["strategy"]["distribution"] == DISTRIBUTION
    # the engine's own precision runs the job, from float32
    assert report["selected"]["strategy_precision"] == "32-true"
    assert report["selected"]["strategy_processes"] == 1
    processes = kit.checks()["strategy.processes"]["details"]["selected"]
    assert processes["strategy"] == "engine"
    assert processes["precision"] == "32-true"
    for name in (
        "strategy.optimizer_steps_the_module_parameters",
        "strategy.training_matches_single_process",
        "strategy.no_backward_sync",
        "strategy.checkpoint_round_trip",
    ):
        assert kit.outcome(name) == "passed", name


def test_kit_catches_optimizers_left_on_moved_parameters(
    run_kit: RunKit, contract_site: list[Path], tmp_path: Path
) -> None:
    """Where moving creates new parameters, only the runtime's re-pointing keeps an optimizer
    created before setup on the module: without it, the kit's check fails."""
    regression = tmp_path / "regression"
    regression.mkdir()
    (regression / "no_repointing.py").write_text(textwrap.dedent(NO_REPOINTING))
    kit = run_kit(
        "-p",
        "no_repointing",
        "--switchyard-accelerator",
        "fresh_params_cpu",
        "-k",
        "optimizer_created_before_setup",
        pythonpath=[*contract_site, regression],
    )
    assert kit.returncode == 1, kit.output
    check = "accelerator.optimizer_created_before_setup"
    assert kit.outcome(check) == "failed"
    message = kit.message(check)
    assert "holds 4 parameter(s) the set-up module does not" in message
    assert "0.bias, 0.weight, 2.bias, 2.weight" in message
