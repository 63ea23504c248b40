"""Run by the tests under torchrun: train under one deepspeed strategy and write a JSON report
of what happened. ``python ds_train.py STRATEGY PRECISION OUT_DIR [MODE [CHECKPOINT ...]]``.

Modes:

``train`` (default; 2 processes): under one Runtime, two engines train the same model on the
same data for STEPS steps: one with a torch optimizer (AdamW), one with DeepSpeed's CPU Adam (in
AdamW mode; not under NVMe offload). The first saves a checkpoint at SAVE_AT; under ZeRO-3 a
third engine, freshly created, loads it and trains the remaining steps (under NVMe offload the
first engine's load of it is refused).

``resume`` (any number of processes): a fresh engine loads CHECKPOINT (saved by ``train``,
maybe by another number of processes) and trains the steps after SAVE_AT. More
``STRATEGY CHECKPOINT`` pairs may follow: each is resumed by a runtime of its own, created in
the same processes after the previous one was torn down (as a script running two trainings
one after the other does).

``config-optimizer``: the DeepSpeed config defines the optimizer (torch's AdamW) and a WarmupLR
scheduler; ``runtime.setup(model)`` returns model, optimizer and scheduler.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from switchyard import Runtime
from switchyard.errors import CheckpointError

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from ds_common import (  # noqa: E402
    LR,
    SAVE_AT,
    STEPS,
    WARMUP,
    WEIGHT_DECAY,
    batches,
    make_model,
    probe_input,
)


def train(runtime, model, optimizer, start, stop, save=None):
    losses = []
    rank, world = runtime.global_rank, runtime.world_size
    for step, (x, y) in enumerate(batches()):
        if step < start:
            continue
        if step >= stop:
            break
        if save is not None and step == SAVE_AT:
            save(step)
        share = x.shape[0] // world
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        loss = nn.functional.cross_entropy(model(x), y)
        runtime.backward(loss, model=model)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(runtime.all_reduce(loss.detach().float(), "mean")))
    return losses


def main() -> None:
    if os.environ.get("DS_TEST_DUMP_AFTER"):
        # debugging a stuck run: every thread's stack after that many seconds
        faulthandler.dump_traceback_later(float(os.environ["DS_TEST_DUMP_AFTER"]), exit=True)
    strategy, precision, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "train"
    if mode != "resume":
        run(strategy, precision, out, mode)
        return
    # resume CHECKPOINT [STRATEGY CHECKPOINT]...: one runtime after the other in this process,
    # each torn down before the next is created
    pairs = [strategy, *sys.argv[5:]]
    for name, checkpoint in zip(pairs[::2], pairs[1::2], strict=True):
        run(name, precision, out, mode, Path(checkpoint))


def run(
    strategy: str, precision: str, out: Path, mode: str, checkpoint: Path | None = None
) -> None:
    from switchyard_deepspeed import DeepSpeedStrategy

    stage = int(strategy.split("_")[2])
    config: dict = {
        # every parameter is partitioned under ZeRO-3, however small
        "zero_optimization": {"stage3_param_persistence_threshold": 0},
        # the offload variants step torch's AdamW on the CPU too, not only DeepSpeed's CPU Adam
        "zero_force_ds_cpu_optimizer": False,
    }
    if mode == "config-optimizer":
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": LR, "weight_decay": WEIGHT_DECAY, "torch_adam": True},
        }
        config["scheduler"] = {"type": "WarmupLR", "params": WARMUP}
    options: dict = {}
    if "_offload" in strategy:
        options = {"offload_optimizer": True, "offload_parameters": stage == 3}
    if strategy.endswith("offload_nvme"):
        options.update(offload_device="nvme", nvme_path=str(out / "nvme"))
    runtime = Runtime(
        strategy=DeepSpeedStrategy(stage=stage, config=config, **options), precision=precision
    )
    runtime.launch()
    report: dict = {"world_size": runtime.world_size, "stage": runtime.strategy.zero_stage}
    if mode == "train":
        train_mode(runtime, strategy, precision, out, report)
    elif mode == "resume":
        model, optimizer = fresh_engine(runtime)
        assert checkpoint is not None
        state = {"model": model, "optimizer": optimizer, "step": -1}
        runtime.load(checkpoint, state)
        report["resumed_step"] = state["step"]
        report["losses_resumed"] = train(runtime, model, optimizer, SAVE_AT, STEPS)
        report["leftovers"] = sorted(p.name for p in checkpoint.parent.iterdir())
    elif mode == "config-optimizer":
        model, optimizer, scheduler = runtime.setup(make_model())
        report["optimizer_type"] = type(optimizer.optimizer).__name__
        report["scheduler_type"] = type(scheduler.scheduler).__name__
        try:
            scheduler.step()
        except RuntimeError as error:
            report["step_refused"] = str(error)
        lrs, losses = [], []
        for step in range(STEPS):
            lrs.append(optimizer.param_groups[0]["lr"])
            losses += train(runtime, model, optimizer, step, step + 1)
        report["lrs"] = lrs
        report["losses"] = losses
        report["last_lr"] = scheduler.get_last_lr()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    if runtime.is_global_zero:
        (out / f"{strategy}-{precision}-{mode}.json").write_text(json.dumps(report))
    runtime.teardown()


def fresh_engine(runtime):
    fresh = make_model()
    for p in fresh.parameters():  # other weights than the checkpoint's
        nn.init.zeros_(p)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    return runtime.setup(fresh, fresh_opt)


def train_mode(runtime, strategy: str, precision: str, out: Path, report: dict) -> None:
    stage = runtime.strategy.zero_stage
    torch_model = make_model()
    torch_opt = torch.optim.AdamW(torch_model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model, optimizer = runtime.setup(torch_model, torch_opt)
    engine = runtime.strategy.engine(model)
    report["optimizer_is_users"] = optimizer.optimizer is torch_opt
    report["param_dtypes"] = sorted({str(p.dtype) for p in engine.module.parameters()})
    master = [t for g in optimizer.param_groups for t in g["params"]]
    report["master_dtypes"] = sorted({str(t.dtype) for t in master})
    # ZeRO's flat float32 partitions, where offload keeps them (ZeRO-3 offload steps them
    # outside the torch optimizer's param_groups)
    partitions = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) or getattr(
        engine.optimizer, "single_partition_of_fp32_groups", []
    )
    report["master_devices"] = sorted({str(t.device) for t in partitions})
    report["precision_seen_by_runtime"] = type(runtime.precision).__name__
    report["offload"] = {
        key: runtime.strategy.config["zero_optimization"].get(key, {}).get("device")
        for key in ("offload_optimizer", "offload_param")
    }
    if stage == 3:
        report["partitioned"] = all(
            p.data.numel() == 0 and hasattr(p, "ds_id") for p in engine.module.parameters()
        )
    checkpoint = out / "checkpoint"

    def save(step: int) -> None:
        runtime.save(checkpoint, {"model": model, "optimizer": optimizer, "step": step})
        with torch.no_grad():
            # what the consolidated export must reproduce in a plain nn.Module
            report["probe_output_at_save"] = model(probe_input()).float().tolist()

    report["losses_torch"] = train(runtime, model, optimizer, 0, STEPS, save=save)
    # while the engine lives: DeepSpeed removes its swap files when it ends
    report["nvme_files"] = sorted(
        str(p.relative_to(out / "nvme")) for p in (out / "nvme").rglob("*") if p.is_file()
    )
    nvme = strategy.endswith("offload_nvme")
    # the NVMe run is checked on its swaps, its torch losses and its refusal only: a second
    # engine of 1024-wide layers swapping to files would add half a minute for nothing checked
    if precision == "32-true" and not nvme:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        cpu_model = make_model()
        cpu_adam = DeepSpeedCPUAdam(
            cpu_model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, adamw_mode=True
        )
        model2, optimizer2 = runtime.setup(cpu_model, cpu_adam)
        report["losses_cpu_adam"] = train(runtime, model2, optimizer2, 0, STEPS)

    if nvme:
        # into the NVMe engine that wrote it (a fresh one costs 20 s of swap set-up): the
        # refusal comes before anything is read or written
        try:
            runtime.load(checkpoint, {"model": model, "optimizer": optimizer})
        except CheckpointError as error:
            report["load_refused"] = str(error)
    elif stage == 3:
        model3, optimizer3 = fresh_engine(runtime)
        state = {"model": model3, "optimizer": optimizer3, "step": -1}
        rest = runtime.load(checkpoint, state)
        report["resumed_step"] = state["step"]
        report["load_remainder"] = sorted(rest)
        report["losses_resumed"] = train(runtime, model3, optimizer3, SAVE_AT, STEPS)
    report["checkpoint_files"] = sorted(
        str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()
    )


if __name__ == "__main__":
    main()
