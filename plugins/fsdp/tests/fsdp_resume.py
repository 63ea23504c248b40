"""Run with torchrun (1 or 2 processes): fsdp_resume.py STRATEGY CHECKPOINT_DIR FULL_FILE OUT_JSON

Loads the sharded checkpoint fsdp_train.py saved at step SAVE_AT, trains to STEPS, then does the
same from the full single-file export, and writes the losses from rank 0.
"""

from __future__ import annotations

import sys

import torch
from fsdp_common import STEPS, Net, make_loader, train, write_report

from switchyard import Runtime


def resume(runtime: Runtime, path: str) -> tuple[list[float], int]:
    torch.manual_seed(0)  # other weights than the checkpoint's, so loading must replace them
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    model, optimizer = runtime.setup(model, optimizer)
    state = {"model": model, "optimizer": optimizer, "step": 0}
    runtime.load(path, state)
    loader = runtime.setup_dataloaders(make_loader(runtime.world_size))
    losses, _ = train(runtime, model, optimizer, loader, state["step"], STEPS)
    return losses, state["step"]


def main(strategy: str, sharded: str, full: str, out: str) -> None:
    runtime = Runtime(accelerator="cpu", strategy=strategy)
    runtime.launch()
    report: dict = {"world_size": runtime.world_size}
    report["sharded_losses"], report["sharded_step"] = resume(runtime, sharded)
    report["full_losses"], report["full_step"] = resume(runtime, full)
    everything = runtime.load(sharded)  # no state: every entry comes back
    report["load_all_keys"] = sorted(everything)
    report["load_all_model_shape"] = list(everything["model"]["out.weight"].shape)
    report["load_all_step"] = everything["step"]
    if runtime.is_global_zero:
        write_report(out, report)


if __name__ == "__main__":
    main(*sys.argv[1:5])
