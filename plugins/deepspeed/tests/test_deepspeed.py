"""Tests of the DeepSpeed plugin.

In this process: the entries, the config (conflicts named with both values, precision mapping,
JSON files) and the refusal of crafted checkpoint files. In real processes (torchrun, 2 CPU
processes over gloo): ZeRO 1, 2 and 3 and the CPU-offload variants with a torch optimizer and
with DeepSpeed's CPU Adam against a single-process reference, bf16-mixed under ZeRO-2 (and
16-mixed, refused where DeepSpeed's CPU accelerator has no float16), an optimizer and scheduler
from the config returned by ``runtime.setup(model)``, a ZeRO-3 checkpoint round trip, ZeRO-2 and
ZeRO-3 checkpoints of 2 processes resumed in 1, the consolidated export (by the plugin, and by
core's ``checkpoint.load`` and ``switchyard consolidate`` through
``switchyard_checkpoint_formats``), and core's conformance kit on ZeRO 1, 2 and 3. Each job
runs once and serves every check of its run (:class:`Jobs`, module-scoped), and the jobs of the
selected tests start ahead, two at a time, while the earlier tests assert on theirs.

The real-process tests need DeepSpeed, which the main environment does not hold: run them with
``scripts/test-deepspeed`` (its own environment, requirements/engine-deepspeed.txt).
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

if importlib.util.find_spec("switchyard_deepspeed") is None:
    pytest.skip(
        "switchyard_deepspeed is not installed here (scripts/env.sh installs it)",
        allow_module_level=True,
    )

from ds_common import (  # noqa: E402
    NVME_WIDTH,
    SAVE_AT,
    STEPS,
    make_model,
    probe_input,
    reference_losses,
)

from switchyard import Runtime, SelectionError  # noqa: E402
from switchyard.errors import CheckpointError  # noqa: E402
from switchyard.testing.subprocesses import child_environment  # noqa: E402

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="needs deepspeed: scripts/test-deepspeed"
)

from switchyard_deepspeed import DeepSpeedStrategy  # noqa: E402
from switchyard_deepspeed.config import ConfigConflictError  # noqa: E402

TIMEOUT = 1500
"""Seconds one torchrun job may take: a first run compiles DeepSpeed's CPU ops (5 to 10 minutes
each on a loaded 2-core machine); later runs take under a minute."""
slow_first_run = pytest.mark.timeout(TIMEOUT + 60)  # above pytest's 300 s of pyproject.toml

TORCH_TOLERANCE = 1e-5
"""Absolute tolerance between the losses of 2 processes under ZeRO (each half of the global
batch, gradients averaged by reduce-scatter) and of one process on the whole batch: float32
summation order only."""

CPU_ADAM_TOLERANCE = 1e-4
"""The same for DeepSpeed's CPU Adam against torch's AdamW: its vectorised kernel rounds
differently from torch's, and the differences grow over the 10 steps."""


# -- in this process: entries and configuration -------------------------------------------


def test_entries_name_every_variant_and_require_deepspeed():
    from switchyard_deepspeed import plugin

    entries = {entry.name: entry for entry in plugin.switchyard_strategies()}
    assert sorted(entries) == [
        "deepspeed",
        "deepspeed_stage_1",
        "deepspeed_stage_2",
        "deepspeed_stage_2_offload",
        "deepspeed_stage_3",
        "deepspeed_stage_3_offload",
        "deepspeed_stage_3_offload_nvme",
    ]
    assert all(entry.requires == ("deepspeed",) for entry in entries.values())
    assert entries["deepspeed_stage_3_offload"].init_args["offload_parameters"] is True
    assert entries["deepspeed_stage_3"].sharded
    assert not entries["deepspeed_stage_2"].sharded


def _runtime(**strategy: Any) -> Runtime:
    precision = strategy.pop("precision", None)
    return Runtime(
        accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(**strategy), precision=precision
    )


def test_config_conflict_names_both_values():
    with pytest.raises(ConfigConflictError) as caught:
        _runtime(config={"gradient_clipping": 1.0}, gradient_clipping=0.5)
    assert "gradient_clipping=0.5" in str(caught.value)
    assert "gradient_clipping=1.0" in str(caught.value)
    with pytest.raises(ConfigConflictError, match=r"stage=3.*zero_optimization\.stage=2"):
        _runtime(config={"zero_optimization": {"stage": 2}}, stage=3)
    with pytest.raises(ConfigConflictError, match=r"precision='32-true'.*bf16\.enabled=true"):
        _runtime(config={"bf16": {"enabled": True}})
    # the same value given both ways is no conflict
    runtime = _runtime(config={"gradient_accumulation_steps": 4}, gradient_accumulation_steps=4)
    assert runtime.strategy.config["gradient_accumulation_steps"] == 4


def test_arguments_and_precision_map_into_the_users_config(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}))
    runtime = _runtime(
        config=path,
        stage=3,
        offload_parameters=True,
        gradient_clipping=1.0,
        train_micro_batch_size_per_gpu=4,
        precision="bf16-mixed",
    )
    config = runtime.strategy.config
    assert config["optimizer"]["type"] == "AdamW"  # the user's settings stay
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert config["bf16"] == {"enabled": True}
    assert config["gradient_clipping"] == 1.0
    assert config["train_micro_batch_size_per_gpu"] == 4
    # DeepSpeed casts and scales: the runtime's precision only converts inputs and outputs
    precision = runtime.precision
    assert type(precision).__name__ == "DeepSpeedPrecision"
    assert precision.param_dtype == torch.bfloat16
    assert precision.forward_context().__class__.__name__ == "nullcontext"
    assert not hasattr(precision, "scaler")
    fp16 = _runtime(precision="16-mixed").strategy.config
    assert fp16["fp16"] == {"enabled": True, "loss_scale": 0}
    assert fp16["zero_optimization"]["stage"] == 2  # the default stage
    # no clipping unless asked (DeepSpeed's own default would clip at 1.0)
    assert fp16["gradient_clipping"] == 0.0


def test_unmapped_precision_and_bad_config_are_refused(tmp_path):
    with pytest.raises(SelectionError, match=r"bf16-true.*'32-true', 'bf16-mixed', '16-mixed'"):
        _runtime(precision="bf16-true")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SelectionError, match="not valid JSON"):
        _runtime(config=bad)
    with pytest.raises(SelectionError, match=r"offload_parameters=True.*needs ZeRO stage 3"):
        _runtime(stage=2, offload_parameters=True)
    with pytest.raises(SelectionError, match="needs nvme_path"):
        _runtime(stage=3, offload_optimizer=True, offload_device="nvme")


# -- in real processes ------------------------------------------------------------------------


def _torchrun(
    out: Path,
    strategy: str,
    precision: str,
    mode: str = "train",
    *extra: str,
    processes: int = 2,
    expect_failure: bool = False,
) -> dict[str, Any]:
    variables = {"DS_TEST_WIDTH": str(NVME_WIDTH)} if strategy.endswith("offload_nvme") else {}
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
        *("--nproc-per-node", str(processes), str(HERE / "ds_train.py")),
        *(strategy, precision, str(out), mode, *extra),
    ]
    try:
        result = subprocess.run(
            command,
            cwd=HERE,
            env=child_environment({"OMP_NUM_THREADS": "1", **variables}),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{command} did not finish in {TIMEOUT} s:\n{error.stderr}")
    if expect_failure:
        assert result.returncode != 0, f"{command} succeeded"
        return {"stderr": result.stderr}
    assert result.returncode == 0, (
        f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return json.loads((out / f"{strategy}-{precision}-{mode}.json").read_text())


@pytest.fixture(scope="module")
def reference() -> list[float]:
    return reference_losses()


CONCURRENT_JOBS = 2
"""Jobs run at once by :class:`Jobs`. A job is mostly start-up (torchrun's agent importing
torch, each process importing torch and DeepSpeed, DeepSpeed's first engine importing torch's
compiler): about one core busy on average, so two at once keep 2 cores busy."""


def _conformance(out: Path, stage: int) -> tuple[subprocess.CompletedProcess[str], Path]:
    strategy = f"deepspeed_stage_{stage}"
    report = out / "report.json"
    command = [
        *(sys.executable, "-m", "switchyard", "conformance", "--accelerator", "cpu"),
        *("--strategy", strategy, "--devices", "2", "--report", str(report)),
    ]
    # outside the checkout, so that its pytest configuration stays out of the kit's session
    result = subprocess.run(
        command,
        cwd=out,
        env=child_environment({"OMP_NUM_THREADS": "1"}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return result, report


class Jobs:
    """The real-process jobs of the selected tests, each run once (several tests assert on one
    job's report) and all started ahead, :data:`CONCURRENT_JOBS` at a time in the order of the
    tests, so that each test mostly finds its job done. A job's failure is raised in every test
    that asserts on it, with the job's own message (its command and output)."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.pool = ThreadPoolExecutor(CONCURRENT_JOBS, thread_name_prefix="ds-job")
        self.futures: dict[tuple[Any, ...], Future[Any]] = {}

    def start(self, key: tuple[Any, ...]) -> Future[Any]:
        if key not in self.futures:
            if key[0] == "resume":  # the checkpoints of the train jobs, started first
                for stage in key[1:]:
                    self.start(("train", f"deepspeed_stage_{stage}", "32-true"))
            if key[0] == "consolidate-cli":
                self.start(("train", "deepspeed_stage_3", "32-true"))
            # made here, in the test's thread: pytest's numbered folders are not made for threads
            out = self.factory.mktemp("-".join(str(part) for part in key))
            self.futures[key] = self.pool.submit(self._run, key, out)
        return self.futures[key]

    def result(self, key: tuple[Any, ...]) -> Any:
        return self.start(key).result()

    def resumed(self, stage: int) -> dict[str, Any]:
        """The report of the 1-process job's resume of ZeRO-``stage``'s checkpoint. One job
        resumes every selected stage, each under a runtime of its own, one after the other."""
        key = next((k for k in self.futures if k[0] == "resume" and stage in k[1:]), None)
        return self.result(key or ("resume", stage))[stage]  # type: ignore[no-any-return]

    def _run(self, key: tuple[Any, ...], out: Path) -> Any:
        kind, *args = key
        if kind == "train":
            strategy, precision = args
            return out, _torchrun(out, strategy, precision)
        if kind == "resume":
            pairs = []
            for stage in args:
                trained, _ = self.result(("train", f"deepspeed_stage_{stage}", "32-true"))
                pairs += [f"deepspeed_stage_{stage}", str(trained / "checkpoint")]
            _torchrun(out, pairs[0], "32-true", "resume", *pairs[1:], processes=1)
            return {
                stage: json.loads(
                    (out / f"deepspeed_stage_{stage}-32-true-resume.json").read_text()
                )
                for stage in args
            }
        if kind == "config-optimizer":
            return _torchrun(out, "deepspeed_stage_2", "32-true", "config-optimizer")
        if kind == "refused-16-mixed":
            return _torchrun(out, "deepspeed_stage_2", "16-mixed", expect_failure=True)
        if kind == "conformance":
            return _conformance(out, *args)
        if kind == "consolidate-cli":  # switchyard consolidate of the ZeRO-3 checkpoint
            trained, _ = self.result(("train", "deepspeed_stage_3", "32-true"))
            destination = out / "full.pt"
            command = [sys.executable, "-m", "switchyard", "consolidate"]
            result = subprocess.run(
                [*command, str(trained / "checkpoint"), str(destination)],
                cwd=out,
                env=child_environment({"OMP_NUM_THREADS": "1"}),
                capture_output=True,
                text=True,
                timeout=300,
            )
            return result, destination
        raise AssertionError(f"no job {key!r}")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _fp16_supported() -> bool:
    from deepspeed.accelerator import get_accelerator

    return bool(get_accelerator().is_fp16_supported())


def _jobs_of(item: pytest.Item) -> list[tuple[Any, ...]]:
    """The jobs a test of this module asserts on (none for the in-process tests and for tests
    that will skip)."""
    name = getattr(item, "originalname", item.name)
    params = item.callspec.params if hasattr(item, "callspec") else {}
    stage3 = ("train", "deepspeed_stage_3", "32-true")
    if name == "test_zero_losses_match_a_single_process_reference":
        return [("train", f"deepspeed_stage_{params['stage']}", "32-true")]
    if name == "test_offload_variants_keep_optimizer_state_on_the_cpu_and_match":
        return [("train", params["strategy"], "32-true")]
    if name == "test_checkpoint_of_2_processes_resumes_in_1":
        return [("resume", params["stage"])]
    if name == "test_config_optimizer_and_scheduler_come_back_from_setup":
        return [("config-optimizer",)]
    if name == "test_16_mixed_is_refused_where_deepspeed_has_no_fp16":
        return [] if _fp16_supported() else [("refused-16-mixed",)]
    if name == "test_16_mixed_under_zero2_trains_with_loss_scaling":
        return [("train", "deepspeed_stage_2", "16-mixed")] if _fp16_supported() else []
    if name == "test_bf16_mixed_under_zero2_trains_with_documented_dtypes":
        return [("train", "deepspeed_stage_2", "bf16-mixed")]
    if name == "test_core_load_and_consolidate_read_a_deepspeed_checkpoint":
        return [stage3, ("consolidate-cli",)]
    if name in (
        "test_zero3_checkpoint_resumes_with_identical_losses",
        "test_consolidated_export_loads_into_a_plain_module",
        "test_crafted_pickle_in_a_shard_is_refused_without_running",
    ):
        return [stage3]
    if name == "test_zero3_nvme_offload":
        has_aio = ctypes.util.find_library("aio") is not None
        return [("train", "deepspeed_stage_3_offload_nvme", "32-true")] if has_aio else []
    if name == "test_conformance_kit_passes":
        return [("conformance", params["stage"])]
    return []


@pytest.fixture(scope="module")
def jobs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    started = Jobs(tmp_path_factory)
    keys = [
        key
        for item in request.session.items
        if item.module is request.module
        for key in _jobs_of(item)
    ]
    # the selected resumes in one job, where the first of them is
    resumes = tuple(sorted(key[1] for key in keys if key[0] == "resume"))
    first = next((i for i, key in enumerate(keys) if key[0] == "resume"), None)
    keys = [key for key in keys if key[0] != "resume"]
    if first is not None:
        keys.insert(first, ("resume", *resumes))
    for key in keys:
        started.start(key)
    yield started
    started.close()


@pytest.fixture(scope="module")
def runs(jobs: Jobs) -> Any:
    def run(strategy: str, precision: str = "32-true") -> tuple[Path, dict[str, Any]]:
        return jobs.result(("train", strategy, precision))  # type: ignore[no-any-return]

    return run


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_losses_match_a_single_process_reference(runs, reference, stage):
    _, report = runs(f"deepspeed_stage_{stage}")
    assert report["world_size"] == 2
    assert report["stage"] == stage
    assert len(set(reference)) == STEPS  # training happened: every step differs
    assert report["optimizer_is_users"]  # runtime.setup returned the user's optimizer
    assert report["precision_seen_by_runtime"] == "DeepSpeedPrecision"
    deltas = {
        name: max(abs(a - b) for a, b in zip(report[name], reference, strict=True))
        for name in ("losses_torch", "losses_cpu_adam")
    }
    print(f"ZeRO-{stage} largest loss differences from the reference: {deltas}")
    assert report["losses_torch"] == pytest.approx(reference, abs=TORCH_TOLERANCE)
    assert report["losses_cpu_adam"] == pytest.approx(reference, abs=CPU_ADAM_TOLERANCE)
    if stage == 3:
        assert report["partitioned"]  # every parameter was sharded


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
@pytest.mark.parametrize("strategy", ["deepspeed_stage_2_offload", "deepspeed_stage_3_offload"])
def test_offload_variants_keep_optimizer_state_on_the_cpu_and_match(runs, reference, strategy):
    _, report = runs(strategy)
    stage3 = strategy.startswith("deepspeed_stage_3")
    assert report["offload"] == {
        "offload_optimizer": "cpu",
        "offload_param": "cpu" if stage3 else None,
    }
    assert report["master_devices"] == ["cpu"]
    assert report["losses_torch"] == pytest.approx(reference, abs=TORCH_TOLERANCE)
    assert report["losses_cpu_adam"] == pytest.approx(reference, abs=CPU_ADAM_TOLERANCE)
    if stage3:
        assert report["partitioned"]
        assert report["losses_resumed"] == report["losses_torch"][SAVE_AT:]


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
@pytest.mark.parametrize("stage", [2, 3])
def test_checkpoint_of_2_processes_resumes_in_1(runs, jobs, stage):
    """ZeRO's shards are cut for 2 processes; one process loads them through DeepSpeed's
    universal format, converted beside the checkpoint and removed after. The stages are resumed
    by one process, one runtime after the other: a runtime created after another was torn down
    in the same process trains too (DeepSpeed's cached process groups are dropped with it)."""
    _, report = runs(f"deepspeed_stage_{stage}")
    resumed = jobs.resumed(stage)
    assert resumed["world_size"] == 1
    assert resumed["resumed_step"] == SAVE_AT
    # the same training, one process on the whole batches: float32 summation order only
    expected = report["losses_torch"][SAVE_AT:]
    assert resumed["losses_resumed"] == pytest.approx(expected, abs=TORCH_TOLERANCE)
    # without the optimizer state (Adam's moments, its step) the losses would differ by far more
    assert not any(name.startswith(".") for name in resumed["leftovers"]), resumed["leftovers"]


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
def test_config_optimizer_and_scheduler_come_back_from_setup(jobs):
    from ds_common import warmup_lrs

    report = jobs.result(("config-optimizer",))
    assert report["optimizer_type"] == "AdamW"
    assert report["scheduler_type"] == "WarmupLR"
    assert "steps this WarmupLR itself" in report["step_refused"]
    lrs = warmup_lrs()
    assert report["lrs"] == pytest.approx(lrs, rel=1e-9)
    assert len(set(lrs)) > 2  # the schedule moved the learning rate
    # the engine stepped the scheduler once per step: the losses of torch's AdamW at those lrs
    assert report["losses"] == pytest.approx(reference_losses(lrs), abs=TORCH_TOLERANCE)


@needs_deepspeed
@pytest.mark.distributed
def test_16_mixed_is_refused_where_deepspeed_has_no_fp16(jobs):
    if _fp16_supported():
        pytest.skip(
            "this machine's CPU has float16 (oneDNN: AVX512-FP16 or AMX-FP16); the refusal "
            "is for CPUs without it"
        )
    failed = jobs.result(("refused-16-mixed",))
    assert "precision '16-mixed' is DeepSpeed's 'fp16' mode" in failed["stderr"]
    assert "use 'bf16-mixed' or '32-true'" in failed["stderr"]


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
def test_16_mixed_under_zero2_trains_with_loss_scaling(runs, reference):
    if not _fp16_supported():
        pytest.skip(
            "DeepSpeed's CPU accelerator has no fp16 on this CPU (needs AVX512-FP16 or "
            "AMX-FP16); test_16_mixed_is_refused_where_deepspeed_has_no_fp16 covers it"
        )
    _, report = runs("deepspeed_stage_2", "16-mixed")
    assert report["param_dtypes"] == ["torch.float16"]
    assert report["master_dtypes"] == ["torch.float32"]
    assert report["losses_torch"] == pytest.approx(reference, abs=5e-2)


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
def test_bf16_mixed_under_zero2_trains_with_documented_dtypes(runs, reference):
    _, report = runs("deepspeed_stage_2", "bf16-mixed")
    # DeepSpeed's bf16 mode: the module's parameters in bfloat16, the optimizer's (partitioned)
    # master weights in float32
    assert report["param_dtypes"] == ["torch.bfloat16"]
    assert report["master_dtypes"] == ["torch.float32"]
    losses = report["losses_torch"]
    assert all(loss == loss for loss in losses)  # no NaN
    # bfloat16 forward: close to the float32 reference, not equal to it
    assert losses == pytest.approx(reference, abs=5e-2)
    assert losses != pytest.approx(reference, abs=1e-6)


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
def test_zero3_checkpoint_resumes_with_identical_losses(runs):
    out, report = runs("deepspeed_stage_3")
    checkpoint = out / "checkpoint"
    assert "switchyard-deepspeed.json" in report["checkpoint_files"]
    # DeepSpeed's own sharded format: one file of parameter and optimizer shards per process
    shards = [f for f in report["checkpoint_files"] if f.startswith("engine0/zero_pp_rank_")]
    assert len(shards) == 4, report["checkpoint_files"]
    # published through a staged sibling: nothing temporary is left beside it
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert checkpoint.is_dir()
    assert report["resumed_step"] == SAVE_AT  # a plain entry round-trips
    assert report["load_remainder"] == []
    assert report["losses_resumed"] == report["losses_torch"][SAVE_AT:]


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
def test_consolidated_export_loads_into_a_plain_module(runs, tmp_path):
    from switchyard_deepspeed import consolidate

    out, report = runs("deepspeed_stage_3")
    destination = tmp_path / "full.pt"
    consolidate(out / "checkpoint", destination)
    state = torch.load(destination, weights_only=True)
    assert state["step"] == SAVE_AT
    plain = make_model()
    plain.load_state_dict(state["model"])  # strict: every key, every shape
    assert {v.dtype for v in state["model"].values()} == {torch.float32}
    with torch.no_grad():
        output = plain(probe_input())
    expected = torch.tensor(report["probe_output_at_save"])
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-6)


def test_checkpoint_format_entry_names_the_files_the_plugin_writes():
    from switchyard.registry import PluginRegistry
    from switchyard_deepspeed import checkpoint
    from switchyard_deepspeed.plugin import switchyard_checkpoint_formats

    entry = switchyard_checkpoint_formats()
    assert entry.marker == checkpoint.META_FILENAME
    assert entry.load() is checkpoint.load_full
    found = [e for _, e in PluginRegistry().checkpoint_formats() if e.name == "deepspeed"]
    assert found == [entry]


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
def test_core_load_and_consolidate_read_a_deepspeed_checkpoint(runs, jobs):
    """``switchyard.checkpoint.load`` and ``switchyard consolidate`` find the plugin's format
    by its marker file (``switchyard_checkpoint_formats``) and read it as the plugin does."""
    from switchyard import checkpoint
    from switchyard_deepspeed import load_full

    out, _ = runs("deepspeed_stage_3")
    source = out / "checkpoint"
    expected = load_full(source)
    loaded = checkpoint.load(source)
    assert sorted(loaded) == sorted(expected)
    assert loaded["step"] == SAVE_AT
    torch.testing.assert_close(loaded["model"], expected["model"], rtol=0, atol=0)
    result, destination = jobs.result(("consolidate-cli",))
    assert result.returncode == 0, result.stderr[-3000:]
    written = torch.load(destination, weights_only=True)
    torch.testing.assert_close(written["model"], expected["model"], rtol=0, atol=0)
    plain = make_model()
    plain.load_state_dict(written["model"])


def test_a_plugin_checkpoint_without_its_engine_names_what_to_install(tmp_path, monkeypatch):
    """Where the engine is missing (faked: a format whose ``requires`` names a module that does
    not exist, from a plugin passed explicitly), reading a directory holding its marker says
    which format it is and what to install."""
    from switchyard import checkpoint, hookimpl
    from switchyard.entries import CheckpointFormatEntry
    from switchyard.registry import PluginRegistry

    class Missing:
        @hookimpl
        def switchyard_checkpoint_formats(self) -> CheckpointFormatEntry:
            return CheckpointFormatEntry(
                "engine-x", "engine-x.json", "engine_x:load", requires=("no_such_engine_x",)
            )

    registry = PluginRegistry(plugins=[Missing()], autoload=False)
    monkeypatch.setattr("switchyard.registry.default_registry", lambda: registry)
    (tmp_path / "engine-x.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"engine-x checkpoint .*no_such_engine_x"):
        checkpoint.load(tmp_path)


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (shutil.rmtree, ("/nonexistent-switchyard-exploit",))


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
def test_crafted_pickle_in_a_shard_is_refused_without_running(runs, tmp_path):
    from switchyard_deepspeed import load_full

    out, _ = runs("deepspeed_stage_3")
    copy = tmp_path / "checkpoint"
    shutil.copytree(out / "checkpoint", copy)
    shard = next((copy / "engine0").glob("zero_pp_rank_1_*optim_states.pt"))
    shard.write_bytes(pickle.dumps({"optimizer_state_dict": _Exploit()}))
    with pytest.raises(CheckpointError, match=r"shutil\.rmtree.*weights_only=False"):
        load_full(copy)
    # a truncated shard is called corrupt, and no opt-out is suggested
    shard.write_bytes(b"\x80\x04\x95")
    with pytest.raises(CheckpointError, match="corrupt") as caught:
        load_full(copy)
    assert "weights_only=False" not in str(caught.value)


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
def test_zero3_nvme_offload(runs):
    """Optimizer states and parameters swapped to files under nvme_path (any directory: here
    the test's own, on whatever disk holds it) through DeepSpeed's async I/O op; loading its
    checkpoint into an NVMe engine is refused (DeepSpeed would restore only swapped tensors)."""
    if ctypes.util.find_library("aio") is None:
        pytest.skip(
            "deepspeed_stage_3_offload_nvme needs libaio (DeepSpeed's async I/O op), which "
            "this machine lacks: apt-get install libaio-dev"
        )
    _, report = runs("deepspeed_stage_3_offload_nvme")
    assert report["offload"] == {"offload_optimizer": "nvme", "offload_param": "nvme"}
    assert any(name.endswith(".swp") for name in report["nvme_files"]), report["nvme_files"]
    reference = reference_losses(width=NVME_WIDTH)
    # 1024-wide layers at lr 1e-2 train unstably (the loss jumps to ~30 in step 2), which
    # amplifies the float32 summation differences of 2 processes (2e-5 in step 0's forward)
    # to ~0.3%: a relative tolerance, far below what wrong swaps would give
    assert report["losses_torch"] == pytest.approx(reference, rel=1e-2)
    assert "swap files" in report["load_refused"]


# -- the conformance kit -------------------------------------------------------------------


@needs_deepspeed
@pytest.mark.distributed
@pytest.mark.slow
@slow_first_run
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_conformance_kit_passes(stage, jobs):
    """Every strategy check of core's kit, on 2 CPU processes. Among them: the optimizer steps
    master copies (declared) whose steps reach every module parameter, and gradients
    accumulated inside ``no_backward_sync`` add up under ZeRO 2 and 3, where DeepSpeed would
    otherwise keep only the last backward's."""
    result, report = jobs.result(("conformance", stage))
    command = " ".join(result.args)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-6000:]}"
    checks = {check["id"]: check for check in json.loads(report.read_text())["checks"]}
    failed = {
        name: check["message"] for name, check in checks.items() if check["outcome"] == "failed"
    }
    assert not failed
    for name in (
        "optimizer_steps_the_module_parameters",
        "no_backward_sync",
        "checkpoint_round_trip",
    ):
        assert checks[f"strategy.{name}"]["outcome"] == "passed", checks[f"strategy.{name}"]
    skipped = {name for name, check in checks.items() if check["outcome"] != "passed"}
    # only the NVMe entry's refusals: selection refuses it here for its missing nvme_path
    assert all(name.endswith("[deepspeed_stage_3_offload_nvme]") for name in skipped), skipped
