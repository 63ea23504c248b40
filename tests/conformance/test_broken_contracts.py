"""The kit's checks of the accelerator and strategy contracts, each seen to fail on a plugin broken
on purpose (``BROKEN_PLUGINS`` and ``AUTOLOADED_EXTENSION`` in conftest.py) with a message that
names the problem, while the checks the bug does not touch pass:

* ``devices="auto"`` on two devices whose backend cannot carry them (``hardwired_nccl_cpu``);
* a strategy refused for an accelerator declaring no backend (``hardwired_nccl_cpu`` again, whose
  hard-coded ``process_group_backend()`` ignores the declaration), and one refused where the
  accelerator cannot shard (selection's own check switched off: ``ddp_sharded_flag``);
* an optimizer created before setup that no longer steps the module (``copying_single_device``);
* seeding that does not reach the device (``unseeded_cpu``);
* autocast that covers the bare matrix product only (``matmul_autocast_cpu``);
* discovery measured without torch's device-extension autoload (``fakedev``).

Most runs select only the checks concerned with ``-k``, so that no strategy job starts. The
sessions that need no file written by the test are started ahead (``kit_session``, conftest.py).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

RunKit = Callable[..., Any]
"""The ``run_kit`` fixture (tests/conformance/conftest.py), returning a ``KitRun``."""

KitRun = Any
"""The ``kit`` fixture's ``KitRun`` (tests/conformance/conftest.py)."""

NO_CAPABILITY_CHECKS = '''
    """A pytest plugin for the kit's session that switches off selection's check of what the
    accelerator declares (a regression of core), so that only the strategies' own checks and the
    kit stand between a user and a run that fails after launch."""
    import switchyard.selection

    switchyard.selection.accelerator_capability_problem = lambda *args, **kwargs: None
'''


@pytest.mark.kit_session(
    "--switchyard-accelerator",
    "hardwired_nccl_cpu",
    "--switchyard-strategy",
    "ddp",
    "-k",
    "auto_devices or availability or parse_devices or refused",
    pythonpath=["broken_site"],
)
def test_hard_coded_backend_fails_auto_devices_and_the_refusal_without_backend(
    kit: KitRun,
) -> None:
    assert kit.returncode == 1, kit.output
    # devices="auto" means two devices, whose processes the backend could not connect
    assert kit.outcome("accelerator.auto_devices") == "failed"
    message = kit.message("accelerator.auto_devices")
    assert (
        "Runtime(accelerator='hardwired_nccl_cpu', devices='auto') selected strategy 'ddp' on 2 "
        "processes with the accelerator's process group backend 'nccl'" in message
    )
    assert "would start and then fail to create their process group" in message
    assert kit.checks()["accelerator.auto_devices"]["details"]["auto_device_count"] == 2
    # an accelerator declaring no backend still gets every multi-process entry of the plugin
    refusals = {n: o for n, o in kit.outcomes().items() if n.startswith("strategy.refused")}
    assert refusals == {
        f"strategy.refused_without_backend[{name}]": "failed"
        for name in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
    }, kit.output  # and none for sharding: ddp declares none
    message = kit.message("strategy.refused_without_backend[ddp]")
    assert (
        "selection accepted strategy 'ddp' on 2 processes of accelerator 'hardwired_nccl_cpu' "
        "(HardwiredAccelerator) declaring distributed_backend=None" in message
    )
    assert "process_group_backend() returns 'nccl' although distributed_backend is None" in message
    # what 'auto' means and how the class answers are right: only the backend is wrong
    assert kit.outcome("accelerator.parse_devices") == "passed"
    assert kit.outcome("accelerator.availability") == "passed"


def test_sharded_strategy_accepted_where_sharding_is_absent_fails(
    run_kit: RunKit, broken_site: Path, tmp_path: Path
) -> None:
    regression = tmp_path / "regression"
    regression.mkdir()
    (regression / "no_capability_checks.py").write_text(textwrap.dedent(NO_CAPABILITY_CHECKS))
    kit = run_kit(
        "-p",
        "no_capability_checks",
        "--switchyard-strategy",
        "ddp_sharded_flag",
        "-k",
        "refused",
        pythonpath=[broken_site, regression],
    )
    assert kit.returncode == 1, kit.output
    assert kit.outcome("strategy.refused_without_sharding[ddp_sharded_flag]") == "failed"
    message = kit.message("strategy.refused_without_sharding[ddp_sharded_flag]")
    assert "declaring supports_sharding=False" in message
    assert "Selection must refuse it with a SelectionError before any process starts" in message
    # DDP refuses an accelerator without a backend itself, in bind(): still refused in time
    assert kit.outcome("strategy.refused_without_backend[ddp_sharded_flag]") == "passed"
    refusal = kit.checks()["strategy.refused_without_backend[ddp_sharded_flag]"]["details"]
    assert "declares no process group backend" in refusal["refusal"]


# only the strategy checks, all that is asserted on: no discovery process
@pytest.mark.distributed
@pytest.mark.kit_session(
    "--switchyard-strategy",
    "copying_single_device",
    "-k",
    "strategy.py",
    pythonpath=["broken_site"],
)
def test_strategy_that_leaves_the_optimizer_on_replaced_parameters_fails(kit: KitRun) -> None:
    assert kit.returncode == 1, kit.output
    check = "strategy.optimizer_steps_the_module_parameters"
    assert kit.outcome(check) == "failed"
    message = kit.message(check)
    assert "the optimizer created before runtime.setup still holds 4 parameter(s)" in message
    assert "(0.bias, 0.weight, 2.bias, 2.weight)" in message
    assert "must re-point the optimizer" in message
    # the model does not train: the parity check sees it too
    assert kit.outcome("strategy.training_matches_single_process") == "failed"
    # the processes and collectives, which the bug does not touch, conform
    for name in ("strategy.processes", "strategy.all_reduce[sum]", "strategy.broadcast"):
        assert kit.outcome(name) == "passed", kit.output


@pytest.mark.kit_session(
    "--switchyard-accelerator",
    "unseeded_cpu",
    "-k",
    "seeding or synchronize or availability",
    pythonpath=["broken_site"],
)
def test_device_generator_that_seeding_does_not_reach_fails(kit: KitRun) -> None:
    assert kit.returncode == 1, kit.output
    assert kit.outcome("accelerator.seeding") == "failed"
    message = kit.message("accelerator.seeding")
    assert "after seed_everything(1234) twice, random tensors created on cpu differ" in message
    assert "must seed it in manual_seed" in message
    assert kit.checks()["accelerator.seeding"]["details"]["manual_seed"] == "Accelerator's default"
    assert kit.outcome("accelerator.synchronize") == "passed"
    assert kit.outcome("accelerator.availability") == "passed"


@pytest.mark.kit_session(
    "--switchyard-accelerator",
    "matmul_autocast_cpu",
    "-k",
    "accelerator.py and autocast",
    pythonpath=["broken_site"],
)
def test_autocast_that_covers_only_the_matrix_product_fails(kit: KitRun) -> None:
    assert kit.returncode == 1, kit.output
    for name, dtype in (("bf16-mixed", "bfloat16"), ("16-mixed", "float16")):
        check = f"accelerator.autocast[{name}]"
        assert kit.outcome(check) == "failed"
        message = kit.message(check)
        assert f"claims to compute in torch.{dtype}" in message
        assert "nn.Linear with bias computed in torch.float32" in message
        assert "nn.Conv2d computed in torch.float32" in message
        assert f"(only matmul in torch.{dtype})" in message
        # the report says what each layer really computed in
        assert kit.checks()[check]["details"]["computed_dtypes"] == {
            "matmul": dtype,
            "nn.Linear with bias": "float32",
            "nn.Conv2d": "float32",
        }


# `import torch` autoloads fakedev_runtime wherever the folder is on the path: measured with
# autoload on, the runtime the plugin imports at discovery would hide in the baseline
@pytest.mark.kit_session(
    "--switchyard-accelerator",
    "fakedev",
    "-k",
    "discovery",
    pythonpath=["autoloaded_extension_site"],
)
def test_discovery_is_measured_without_torch_extension_autoload(kit: KitRun) -> None:
    assert kit.returncode == 1, kit.output
    check = "entries.discovery_is_light[fakedev]"
    assert kit.outcome(check) == "failed"
    assert "discovery imported fakedev_runtime, an engine it only requires" in kit.message(check)
    details = kit.checks()[check]["details"]
    assert details["torch_device_backend_autoload"] == "0"
    assert details["torch_backends_not_loaded"] == ["fakedev"]
