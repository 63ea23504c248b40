"""One DeepSpeed job of the crafted-checkpoint suite (tests/test_checkpoint_safety.py), run by
torchrun on as many processes as strategies.STRATEGIES gives the strategy, in the environment of
scripts/test-deepspeed.

    deepspeed_job.py STRATEGY OUT generate
        writes OUT/STRATEGY/ckpt: runtime.save of a trained model, its optimizer and plain
        values, in DeepSpeed's directory format (docs/deepspeed.md, "Checkpoints").
    deepspeed_job.py STRATEGY OUT load CASES.json CONTROL.json
        loads every case with runtime.load into a fresh engine (checkpoint_job.load), then rank
        zero runs each payload CONTROL.json lists the unsafe way: the positive control.
    deepspeed_job.py STRATEGY OUT both CASES.json CONTROL.json
        generate, then wait (bounded) for the test to write CASES.json (after CONTROL.json) from
        the checkpoint, then load and run the control: one job start instead of two (DeepSpeed's
        imports cost a process about 15 s of CPU on 2 cores).

Each process writes OUT/STRATEGY-ACTION.RANK.json, as checkpoint_job.py does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from checkpoint_job import control, load, save_report, trained, wait_for
from strategies import runtime_kwargs

from switchyard import Runtime


def main() -> None:
    name, out, action = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    runtime = Runtime(**runtime_kwargs(name))
    runtime.launch()
    torch.set_num_threads(1)
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    if action in ("generate", "both"):
        model, optimizer = trained(runtime)
        state = {"model": model, "optimizer": optimizer, "step": 3, "sched": {"lr": 0.5}}
        runtime.save(target / "ckpt", state)
        save_report(out, name, "generate", runtime, {})
        if action == "generate":
            return
    wait_for(Path(sys.argv[4]))
    cases = json.loads(Path(sys.argv[4]).read_text())
    save_report(out, name, "load", runtime, load(runtime, cases))
    runtime.barrier()
    if runtime.global_rank == 0:
        control(Path(sys.argv[5]))


if __name__ == "__main__":
    main()
