"""Tests of the FSDP plugin: selection and options in this process; training, checkpoints,
empty init, mixed precision and gradient accumulation in real processes over gloo.

The multi-process scenarios are scripts beside this file (fsdp_train.py, fsdp_resume.py,
fsdp_spawn_checks.py) that write a JSON report; the tests assert on the reports. The training
run of each strategy is shared by the tests that read it (module-scoped fixtures).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from switchyard import AcceleratorEntry, Runtime, SelectionError, hookimpl
from switchyard.accelerator import Accelerator
from switchyard.testing.subprocesses import child_environment

HERE = Path(__file__).parent
TIMEOUT = 180
STEPS, SAVE_AT = 20, 10
LOSS_TOLERANCE = 1e-5
"""Absolute tolerance between losses of runs that compute the same steps on differently sharded
(or differently reduced) data: float32 summation order only (observed differences: ~2e-7)."""


def _run(command: list[str]) -> None:
    try:
        result = subprocess.run(
            command,
            cwd=HERE,
            env=child_environment({"OMP_NUM_THREADS": "1"}),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{command} did not finish in {TIMEOUT} s:\n{error.stderr}")
    assert result.returncode == 0, (
        f"{command} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    )


def _torchrun(nproc: int, script: str, *args: str) -> None:
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--standalone",
            str(HERE / script),
            *args,
        ]
    )


def _common() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("fsdp_common", HERE / "fsdp_common.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(tmp_path_factory: pytest.TempPathFactory, strategy: str) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp(strategy)
    _torchrun(2, "fsdp_train.py", strategy, str(out))
    return out, json.loads((out / f"{strategy}.json").read_text())


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return _train(tmp_path_factory, "fsdp")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return _train(tmp_path_factory, "ddp")


# -- in real processes ----------------------------------------------------------------------


@pytest.mark.distributed
def test_fsdp_trains_to_the_losses_of_ddp(fsdp_run, ddp_run):
    _, fsdp = fsdp_run
    _, ddp = ddp_run
    assert fsdp["world_size"] == ddp["world_size"] == 2
    assert len(fsdp["losses"]) == len(ddp["losses"]) == STEPS
    assert len(set(fsdp["losses"])) == STEPS  # training happened: every step differs
    assert fsdp["losses"] == pytest.approx(ddp["losses"], abs=LOSS_TOLERANCE)
    # clipping at 0.5 is active (norms above it) and uses the global norm in both
    assert max(ddp["norms"]) > 0.5
    assert fsdp["norms"] == pytest.approx(ddp["norms"], rel=1e-5)
    # the optimizer created before setup was re-pointed at the sharded parameters
    assert fsdp["sharded_params"]
    assert fsdp["optimizer_holds_module_params"]
    assert fsdp["checkpoint_wrapped"]  # activation checkpointing was applied


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("nproc", "strategy"), [(2, "fsdp"), (1, "fsdp_cpu_offload")], ids=["2proc", "1proc-offload"]
)
def test_sharded_checkpoint_resumes_to_identical_losses(fsdp_run, tmp_path, nproc, strategy):
    out, trained = fsdp_run
    checkpoint = out / "sharded"
    # a directory: metadata, one shard file per saving process, and the plain entries
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]
    # the second save replaced the first through a temporary sibling; nothing is left over
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    report_file = tmp_path / "resume.json"
    _torchrun(
        nproc, "fsdp_resume.py", strategy, str(checkpoint), str(out / "full.pt"), str(report_file)
    )
    report = json.loads(report_file.read_text())
    assert report["world_size"] == nproc
    expected = trained["losses"][SAVE_AT:]
    assert report["sharded_step"] == SAVE_AT  # a plain value round-trips
    assert report["sharded_losses"] == pytest.approx(expected, abs=LOSS_TOLERANCE)
    # the single-file export loads into the sharded model too, optimizer state included
    assert report["full_step"] == SAVE_AT
    assert report["full_losses"] == pytest.approx(expected, abs=LOSS_TOLERANCE)
    # load(path) without state returns every entry, modules as full tensors
    assert report["load_all_keys"] == ["model", "optimizer", "step"]
    assert report["load_all_model_shape"] == [3, 32]
    assert report["load_all_step"] == SAVE_AT


@pytest.mark.distributed
def test_training_does_not_import_the_state_dict_code(fsdp_run):
    """torch.distributed.checkpoint.state_dict (about 80 modules, 3 MiB a process) is imported
    by the first save, not by setting up and training, as with raw fully_shard."""
    _, report = fsdp_run
    assert report["state_dict_code_imported_by_training"] is False


@pytest.mark.distributed
def test_full_export_equals_gathered_parameters_and_loads_into_plain_modules(fsdp_run):
    out, _ = fsdp_run
    exported = torch.load(out / "full.pt", weights_only=True)
    gathered = torch.load(out / "gathered.pt", weights_only=True)
    model_state = exported["model"]
    assert set(model_state) == set(gathered)  # no wrapper prefixes (activation checkpointing)
    for name, tensor in gathered.items():
        assert not model_state[name].is_meta
        assert type(model_state[name]) is torch.Tensor
        torch.testing.assert_close(model_state[name], tensor, rtol=0, atol=0)
    assert exported["step"] == SAVE_AT
    common = _common()
    plain = common.Net()
    plain.load_state_dict(model_state)  # strict
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.01)
    optimizer.load_state_dict(exported["optimizer"])
    assert len(optimizer.state) == len(list(plain.parameters()))
    first = next(iter(optimizer.state.values()))
    assert float(first["step"]) == SAVE_AT
    for param in plain.parameters():
        assert optimizer.state[param]["exp_avg"].shape == param.shape


@pytest.mark.distributed
def test_empty_init_creates_meta_parameters_materialized_sharded_by_setup(fsdp_run):
    _, report = fsdp_run
    assert report["empty_meta_before"]
    assert report["empty_materialized"]
    assert report["empty_finite"]
    assert report["empty_sharded"]
    assert report["empty_nonzero_init"]  # reset_parameters() ran on the allocated shards
    assert report["empty_shards_differ"]  # not one seed drawing the same numbers per shard
    assert report["empty_step_moved"]  # the optimizer created from meta parameters steps
    assert report["early_optimizer_repointed"]
    assert report["late_optimizer_unchanged"]


@pytest.mark.distributed
def test_spawn_mixed_precision_no_backward_sync_and_global_clipping(tmp_path):
    report_file = tmp_path / "spawn.json"
    _run([sys.executable, str(HERE / "fsdp_spawn_checks.py"), str(report_file)])
    report = json.loads(report_file.read_text())
    assert report["all_dtensor"]
    # bf16-mixed: gathered parameters in bfloat16 inside forward, float32 shards and gradients
    assert report["param_dtype_in_forward"] == "torch.bfloat16"
    assert report["shard_dtypes"] == ["torch.float32"]
    assert report["grad_dtypes"] == ["torch.float32"]
    assert report["output_dtype"] == "torch.float32"
    # no reduce-scatter inside no_backward_sync, and the accumulated gradient is the same
    assert report["no_grad_shards_inside_no_sync"]
    assert report["accumulation_max_rel_error"] < 1e-2
    # clipping sees the norm of the whole gradient, not the local shard's
    assert report["clip_norm"] == pytest.approx(report["full_norm"], rel=1e-5)
    assert report["local_norm"] < report["full_norm"] * 0.99
    assert report["clipped_norm"] == pytest.approx(1e-3, rel=1e-3)


# -- in this process ------------------------------------------------------------------------


def test_entries_choose_start_method_and_offload():
    from switchyard_fsdp import FSDPStrategy

    plain = Runtime(accelerator="cpu", strategy="fsdp", devices=2).strategy
    spawn = Runtime(accelerator="cpu", strategy="fsdp_spawn", devices=2).strategy
    offload = Runtime(accelerator="cpu", strategy="fsdp_cpu_offload", devices=2).strategy
    assert isinstance(plain, FSDPStrategy)
    assert plain.start_method == "popen"
    assert not plain.cpu_offload
    assert isinstance(spawn, FSDPStrategy)
    assert spawn.start_method == "spawn"
    assert spawn.launcher is not None
    assert spawn.launcher.requires_function
    assert isinstance(offload, FSDPStrategy)
    assert offload.cpu_offload is True


class _FakeMPS(Accelerator):
    device_type: ClassVar[str] = "mps"
    distributed_backend: ClassVar[str | None] = None

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def device_count(cls) -> int:
        return 2

    @classmethod
    def get_device(cls, index: int) -> torch.device:
        return torch.device("cpu")


def _fake_mps_plugin() -> types.ModuleType:
    plugin = types.ModuleType("fake_mps_plugin")

    def switchyard_accelerators() -> list[AcceleratorEntry]:
        return [
            AcceleratorEntry(name="fakemps", factory=_FakeMPS),
            AcceleratorEntry(name="fakeflat", factory=_FakeFlat),
        ]

    plugin.switchyard_accelerators = hookimpl(switchyard_accelerators)  # type: ignore[attr-defined]
    return plugin


class _FakeFlat(_FakeMPS):
    """A fake device (no such hardware here) with a process group backend but no sharding."""

    distributed_backend: ClassVar[str | None] = "gloo"
    supports_sharding: ClassVar[bool] = False


def test_unsupported_accelerator_fails_at_selection():
    # what the accelerator declares decides, not a list of device names in the FSDP plugin
    with pytest.raises(SelectionError, match=r"declares no process group backend for 'mps'"):
        Runtime(accelerator="fakemps", strategy="fsdp", devices=2, plugins=[_fake_mps_plugin()])
    with pytest.raises(SelectionError, match=r"supports_sharding=False"):
        Runtime(accelerator="fakeflat", strategy="fsdp", devices=2, plugins=[_fake_mps_plugin()])


def test_unsupported_accelerator_fails_for_an_instance_too():
    from switchyard_fsdp import FSDPStrategy

    with pytest.raises(SelectionError, match=r"declares no process group backend for 'mps'"):
        Runtime(
            accelerator="fakemps",
            strategy=FSDPStrategy(),
            devices=2,
            plugins=[_fake_mps_plugin()],
        )
    with pytest.raises(SelectionError, match=r"supports_sharding=False"):
        Runtime(
            accelerator="fakeflat",
            strategy=FSDPStrategy(),
            devices=2,
            plugins=[_fake_mps_plugin()],
        )


@pytest.mark.parametrize(
    ("precision", "param_dtype", "reduce_dtype"),
    [
        ("32-true", None, None),
        ("bf16-mixed", torch.bfloat16, torch.float32),
        ("16-mixed", torch.float16, torch.float32),
        ("bf16-true", torch.bfloat16, torch.bfloat16),
        ("16-true", torch.float16, torch.float16),
    ],
)
def test_mixed_precision_policy_follows_the_precision(precision, param_dtype, reduce_dtype):
    strategy = Runtime(accelerator="cpu", strategy="fsdp", devices=2, precision=precision).strategy
    policy = strategy.mixed_precision_policy()
    assert policy.param_dtype is param_dtype
    assert policy.reduce_dtype is reduce_dtype


def test_explicit_mixed_precision_policy_wins():
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from switchyard_fsdp import FSDPStrategy

    policy = MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.bfloat16)
    runtime = Runtime(
        accelerator="cpu",
        strategy=FSDPStrategy(mixed_precision=policy),
        devices=2,
        precision="bf16-mixed",
    )
    assert runtime.strategy.mixed_precision_policy() is policy


def test_16_mixed_uses_a_sharded_grad_scaler():
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    runtime = Runtime(accelerator="cpu", strategy="fsdp", devices=2, precision="16-mixed")
    state = {"scale": 128.0, "growth_factor": 3.0, "backoff_factor": 0.25, "growth_interval": 7}
    # a checkpoint restored before setup: kept until the scaler exists
    runtime.precision.load_state_dict({**state, "_growth_tracker": 2})
    runtime.precision.bind(torch.device("cpu"))  # what setup_environment does first
    scaler = runtime.precision.scaler
    # the strategy chose the scaler class through the precision (connect_precision), so the
    # precision's own scaler is the sharded one from the start
    assert type(scaler) is ShardedGradScaler
    assert scaler.state_dict() == {**state, "_growth_tracker": 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"auto_wrap_policy": {nn.Linear}, "min_num_params": 10}, "pass one of them"),
        ({"auto_wrap_policy": {int}}, "must be nn.Module classes"),
        ({"activation_checkpointing_policy": 3}, "must be nn.Module classes"),
        ({"min_num_params": 0}, "positive integer"),
        ({"state_dict_type": "consolidated"}, "'sharded' or 'full'"),
        ({"cpu_offload": "yes"}, "CPUOffloadPolicy"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    from switchyard_fsdp import FSDPStrategy

    with pytest.raises(ValueError, match=message):
        FSDPStrategy(**kwargs)


def test_wrap_policies_select_submodules_children_first():
    from switchyard_fsdp import FSDPStrategy

    common = _common()
    net = common.Net()
    by_class = FSDPStrategy(auto_wrap_policy={common.Block, nn.Linear})._wrap_targets(net)
    names = {id(m): n for n, m in net.named_modules()}
    order = [names[id(m)] for m in by_class]
    assert set(order) == {"inp", "blocks.0", "blocks.0.fc", "blocks.1", "blocks.1.fc", "out"}
    assert order.index("blocks.0.fc") < order.index("blocks.0")
    assert order.index("blocks.1.fc") < order.index("blocks.1")
    # sizes: inp 544, each block's fc 1056, out 99 parameters; containers are never targets
    by_size = FSDPStrategy(min_num_params=500)._wrap_targets(net)
    assert sorted(names[id(m)] for m in by_size) == ["blocks.0.fc", "blocks.1.fc", "inp"]
    by_callable = FSDPStrategy(auto_wrap_policy=lambda m: m is net.out)._wrap_targets(net)
    assert by_callable == [net.out]
    assert FSDPStrategy()._wrap_targets(net) == []


def test_optimizer_state_dict_key_conversion_round_trips():
    from switchyard_fsdp import checkpoint as fsdp_checkpoint

    named = {
        "state": {"a.weight": {"step": 1}, "b.bias": {"step": 2}},
        "param_groups": [{"lr": 0.1, "params": ["a.weight"]}, {"lr": 0.2, "params": ["b.bias"]}],
    }
    indexed = fsdp_checkpoint.names_to_index(named)
    assert indexed == {
        "state": {0: {"step": 1}, 1: {"step": 2}},
        "param_groups": [{"lr": 0.1, "params": [0]}, {"lr": 0.2, "params": [1]}],
    }
    assert fsdp_checkpoint.keyed_by_index(indexed)
    assert not fsdp_checkpoint.keyed_by_index(named)


def test_torch_save_of_a_sharded_state_dict_warns_and_runtime_save_of_it_does_not(
    tmp_path: Path,
) -> None:
    """A script's own ``torch.save(model.state_dict(), path)`` under FSDP saves this process's
    shards only: it warns (once per process). ``runtime.save`` of the module or of that state
    dict saves every shard and does not warn; the warned file is still a plain dict that loads
    with ``weights_only=True``."""
    import collections
    import warnings

    import switchyard.wrappers

    runtime = Runtime(accelerator="cpu", strategy="fsdp", devices=1)
    runtime.launch()
    model = runtime.setup(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    state = model.state_dict()
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.save(tmp_path / "whole", {"model": model, "again": model.state_dict()})
    switchyard.wrappers._warned_sharded_save = False  # other tests of this process may have
    with pytest.warns(UserWarning, match=r"shards only, part of the model.*runtime\.save"):
        torch.save(state, tmp_path / "part.pt")
    loaded = torch.load(tmp_path / "part.pt", weights_only=True)
    assert type(loaded) is collections.OrderedDict
    assert list(loaded) == list(state)
    assert loaded._metadata == state._metadata  # load_state_dict's version records
    runtime.teardown()
