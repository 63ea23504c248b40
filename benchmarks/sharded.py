"""Sharded training on 2 CPU processes (gloo): FSDP2 against raw ``fully_shard``, and ZeRO 1, 2
and 3 against raw ``deepspeed.initialize``: throughput and peak memory per rank.

Both measure the way :func:`benchmarks.distributed.measure_training` does (a paired job with
raw, raw again and switchyard in the same processes, then rounds of separate jobs; final
parameters bit-identical rank by rank, else the scenario fails), on an MLP large enough that a
step takes well over 5 ms, so that what is measured is the sharding engine's work plus
whatever switchyard adds to it.

fsdp2
    raw: ``fully_shard`` on every ``nn.Linear`` and then on the root (``reshard_after_forward=
    False`` for the root, as FSDP2 recommends), ``AdamW`` over the sharded parameters;
    switchyard: ``Runtime(strategy=FSDPStrategy(auto_wrap_policy={nn.Linear}))``, the optimizer
    created before ``runtime.setup(model, optimizer)`` (switchyard re-points it).
deepspeed
    raw: ``deepspeed.init_distributed("gloo")`` and ``deepspeed.initialize(model, AdamW,
    config)``, the loop calling ``engine.backward`` and ``engine.step``; switchyard:
    ``Runtime(strategy="deepspeed_stage_N")``, whose engine's config must equal the raw one
    (the worker checks). Both run in the DeepSpeed environment
    (``requirements/engine-deepspeed.txt``) with ``DS_ACCELERATOR=cpu`` and the compiled-op
    cache the plugin uses (``TORCH_EXTENSIONS_DIR``), so neither compiles anything while timed.
    The scenario is skipped, with the reason, where that environment has not been built
    (``scripts/engine-env deepspeed`` builds it; ``--build-envs`` lets the scenario do so)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.distributed import ROOT, TrainingPlan, available_pythons, measure_training
from benchmarks.environments import engine_python
from benchmarks.results import Comparison, Context, Scenario
from benchmarks.stats import fewest_values
from benchmarks.workers.train import Workload

SHARDED_WORKLOAD = Workload(
    features=256, hidden=512, layers=3, warmup_steps=10, blocks=8, block_steps=10
)
"""MLP 256-512-512-512-10, batch 64 per rank: about 10-20 ms a step on 2 shared cores."""

QUICK_WORKLOAD = dataclasses.replace(SHARDED_WORKLOAD, warmup_steps=2, blocks=2, block_steps=3)

THROUGHPUT_TARGET = 0.98
MEMORY_TARGET = 1.02


def sharded_plan(scenario: str, strategy: str, quick: bool, **changes: object) -> TrainingPlan:
    """The plan of one sharded configuration; ``quick`` shrinks it to a few seconds of
    training."""
    plan = TrainingPlan(
        scenario=scenario,
        strategy=strategy,
        workload=QUICK_WORKLOAD if quick else SHARDED_WORKLOAD,
        paired_rounds=4 if quick else 40,
        paired_block_steps=2 if quick else 5,
        # peak memory comes from the separate jobs: fewer rounds give no 95% interval
        rounds=1 if quick else fewest_values(),
        throughput_target=THROUGHPUT_TARGET,
        memory_target=MEMORY_TARGET,
    )
    return dataclasses.replace(plan, **changes)  # type: ignore[arg-type]


def run_fsdp2(ctx: Context) -> list[Comparison]:
    """Switchyard's FSDP strategy against raw ``fully_shard``."""
    pythons = available_pythons(ctx, ("switchyard",))
    if not pythons:
        return []
    plan = sharded_plan("fsdp2", "fsdp", ctx.quick)
    return measure_training(ctx, plan, pythons, Path(sys.executable)).comparisons


# -- deepspeed --------------------------------------------------------------------------------


class EnvironmentMissing(RuntimeError):
    """The DeepSpeed environment has not been built (and building was not asked for)."""


def deepspeed_python(build: bool) -> Path:
    """The DeepSpeed environment's interpreter: built (or reused) by ``scripts/engine-env
    deepspeed`` when ``build``; otherwise the newest complete one this checkout built, or
    :class:`EnvironmentMissing` saying how to make it."""
    if build:
        try:
            return engine_python("deepspeed")
        except RuntimeError as error:
            raise EnvironmentMissing(str(error)) from error
    cache = Path(os.environ.get("SWITCHYARD_CACHE") or Path.home() / ".cache" / "switchyard")
    # scripts/engine-env marks a finished environment with .complete and its checkout in .root
    built = [
        venv
        for venv in (cache / "envs").glob("deepspeed-*")
        if (venv / ".complete").exists()
        and (venv / ".root").exists()
        and (venv / ".root").read_text().strip() == str(ROOT)
        and (venv / "bin" / "python").exists()
    ]
    if not built:
        raise EnvironmentMissing(
            f"no DeepSpeed environment under {cache / 'envs'} for this checkout: run "
            "scripts/engine-env deepspeed (or pass --build-envs) to build it"
        )
    newest = max(built, key=lambda venv: (venv / ".complete").stat().st_mtime)
    return newest / "bin" / "python"


def deepspeed_environment(python: Path) -> tuple[dict[str, str], str]:
    """What every DeepSpeed job gets (its CPU accelerator, and the op cache the plugin and
    ``scripts/test-deepspeed`` use, so that the raw engine loads the same compiled ops), and
    the environment in words for the notes."""
    done = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; "
            "from switchyard_deepspeed.extensions import default_directory; "
            "print(default_directory()); print(m.version('deepspeed')); print(m.version('torch'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    extensions, deepspeed, torch = done.stdout.split()[-3:]
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR") or extensions
    described = f"DeepSpeed {deepspeed}, torch {torch}, DS_ACCELERATOR=cpu, {python}"
    return {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": extensions}, described


def run_deepspeed(ctx: Context) -> list[Comparison]:
    """ZeRO 1, 2 and 3 through switchyard against raw ``deepspeed.initialize``, each stage its
    own plan; skipped (no comparisons, the reason logged) without the DeepSpeed environment."""
    if "switchyard" not in ctx.programs:
        return []
    try:
        python = deepspeed_python(build=ctx.build_envs)
    except EnvironmentMissing as error:
        ctx.log(f"deepspeed: skipped: {error}")
        return []
    env, described = deepspeed_environment(python)
    comparisons: list[Comparison] = []
    for stage in (1, 2, 3):
        plan = deepspeed_plan(stage, ctx.quick, env=env, notes=described)
        comparisons += measure_training(ctx, plan, {"switchyard": python}, python).comparisons
    return comparisons


def deepspeed_plan(stage: int, quick: bool, **changes: object) -> TrainingPlan:
    """The plan of ZeRO stage ``stage``. A DeepSpeed job takes 10-15 s to start here: fewer
    paired rounds keep the three stages within about twenty minutes, while the separate
    rounds, where peak memory comes from, stay at the fewest that give a 95% interval; a quick
    run keeps the paired jobs alone."""
    plan = sharded_plan("deepspeed", f"zero{stage}", quick, label=f"ZeRO-{stage} ", **changes)
    if quick:
        return dataclasses.replace(plan, rounds=0)
    return dataclasses.replace(plan, paired_rounds=30, paired_block_steps=4)


SCENARIOS = (
    Scenario(
        name="fsdp2",
        description="2-process FSDP2 (CPU, gloo) against raw fully_shard: throughput and peak "
        "memory per rank, with the raw-against-raw A/A",
        programs=("raw", "switchyard"),
        run=run_fsdp2,
    ),
    Scenario(
        name="deepspeed",
        description="ZeRO 1, 2 and 3 on 2 CPU processes against raw deepspeed.initialize: "
        "throughput and peak memory per rank (needs the DeepSpeed environment)",
        programs=("raw", "switchyard"),
        run=run_deepspeed,
    ),
)
