"""Training that resumes from its last checkpoint, the pattern docs/getting-started.md documents
("Restarting a failed job"), for tests/test_failures.py.

Usage: resume.py OUT [--fail-once] under ``switchyard run --devices 2 --max-restarts 1``. Trains
STEPS steps on batches that depend only on the step and the rank, saves OUT/last.pt every
SAVE_EVERY steps, and on start loads it if it exists. Rank 0 appends "step loss" to
OUT/losses.txt after each step (a restarted run repeats the steps after its checkpoint, the last
line of a step wins) and saves the final parameters (gathered, if sharded) to OUT/final.pt. With --fail-once, rank 1
SIGKILLs itself at step KILL_AT the first time (OUT/killed marks that it did).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from switchyard import Runtime

STEPS = 12
SAVE_EVERY = 3
KILL_AT = 7


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(8, 6, generator=generator)
    return x, x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(8, 1, generator=generator)


def main() -> None:
    out, fail_once = Path(sys.argv[1]), "--fail-once" in sys.argv
    runtime = Runtime(accelerator="cpu")  # strategy and devices from switchyard run
    runtime.launch()
    rank = runtime.global_rank
    runtime.seed_everything(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = runtime.setup(model, optimizer)
    state = {"model": model, "optimizer": optimizer, "step": 0}
    checkpoint = out / "last.pt"
    if checkpoint.exists():  # resume where the last completed checkpoint left off
        runtime.load(checkpoint, state)
    for step in range(state["step"], STEPS):
        if fail_once and step == KILL_AT and rank == 1 and not (out / "killed").exists():
            (out / "killed").write_text(str(step))
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch(step, rank)
        loss = nn.functional.mse_loss(model(x), y)
        runtime.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        mean = runtime.all_reduce(loss.detach(), op="mean")
        if rank == 0:
            with open(out / "losses.txt", "a", encoding="ascii") as handle:
                handle.write(f"{step} {mean.item()!r}\n")
        if (step + 1) % SAVE_EVERY == 0:
            state["step"] = step + 1
            runtime.save(checkpoint, state)
    # every rank: gathering a sharded (DTensor) parameter is a collective
    final = {
        name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().cpu()
        for name, value in model.module.state_dict().items()
    }
    if rank == 0:
        torch.save(final, out / "final.pt")


if __name__ == "__main__":
    main()
