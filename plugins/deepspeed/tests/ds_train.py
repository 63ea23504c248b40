"""Run by the tests under torchrun (2 processes): train under one deepspeed strategy and write a
JSON report of what happened. ``python ds_train.py STRATEGY PRECISION OUT_DIR``.

Under one Runtime, two engines train the same model on the same data for STEPS steps: one with
a torch optimizer (AdamW), one with DeepSpeed's CPU Adam (in AdamW mode). Under ZeRO-3 the first
also saves a checkpoint at SAVE_AT, and a third engine, freshly created, loads it and trains the
remaining steps.
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

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from ds_common import (  # noqa: E402
    LR,
    SAVE_AT,
    STEPS,
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
    from switchyard_deepspeed import DeepSpeedStrategy

    stage = int(strategy.split("_")[2])
    # stage3_param_persistence_threshold=0: every parameter is partitioned, however small
    config = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    options: dict = {}
    if strategy.endswith("offload_nvme"):
        options = {
            "offload_optimizer": True,
            "offload_parameters": True,
            "offload_device": "nvme",
            "nvme_path": str(out / "nvme"),
        }
    runtime = Runtime(
        strategy=DeepSpeedStrategy(stage=stage, config=config, **options), precision=precision
    )
    runtime.launch()
    report: dict = {"world_size": runtime.world_size, "stage": runtime.strategy.zero_stage}

    torch_model = make_model()
    torch_opt = torch.optim.AdamW(torch_model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model, optimizer = runtime.setup(torch_model, torch_opt)
    engine = runtime.strategy.engine(model)
    report["optimizer_is_users"] = optimizer.optimizer is torch_opt
    report["param_dtypes"] = sorted({str(p.dtype) for p in engine.module.parameters()})
    master = [t for g in optimizer.param_groups for t in g["params"]]
    report["master_dtypes"] = sorted({str(t.dtype) for t in master})
    report["precision_seen_by_runtime"] = type(runtime.precision).__name__
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

    report["losses_torch"] = train(
        runtime, model, optimizer, 0, STEPS, save=save if stage == 3 else None
    )
    if precision == "32-true":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        cpu_model = make_model()
        cpu_adam = DeepSpeedCPUAdam(
            cpu_model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, adamw_mode=True
        )
        model2, optimizer2 = runtime.setup(cpu_model, cpu_adam)
        report["losses_cpu_adam"] = train(runtime, model2, optimizer2, 0, STEPS)

    if stage == 3:
        fresh = make_model()
        for p in fresh.parameters():  # other weights than the checkpoint's
            nn.init.zeros_(p)
        fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        model3, optimizer3 = runtime.setup(fresh, fresh_opt)
        state = {"model": model3, "optimizer": optimizer3, "step": -1}
        rest = runtime.load(checkpoint, state)
        report["resumed_step"] = state["step"]
        report["load_remainder"] = sorted(rest)
        report["losses_resumed"] = train(runtime, model3, optimizer3, SAVE_AT, STEPS)
        report["checkpoint_files"] = sorted(
            str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()
        )
    if runtime.is_global_zero:
        (out / f"{strategy}-{precision}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
