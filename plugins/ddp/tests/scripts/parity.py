"""Train a small regression model for 20 steps with DDP and write the losses and parameters.

Usage: parity.py OUT [--runtime-args JSON] [--fail-at-step N --fail-rank R]
Each rank trains on its half of one fixed batch of 16, so the averaged gradient equals that of a
single process on the whole batch.
"""

import argparse
import json
import sys

import torch
from torch import nn

from switchyard import Runtime

STEPS = 20
BATCH = 16


def make_problem():
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(BATCH, 6, generator=generator)
    y = torch.randn(BATCH, 1, generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    return model, x, y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--runtime-args", default="{}")
    parser.add_argument("--fail-at-step", type=int, default=-1)
    parser.add_argument("--fail-rank", type=int, default=1)
    args = parser.parse_args()

    runtime = Runtime(**json.loads(args.runtime_args))
    runtime.launch()
    model, x, y = make_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = runtime.setup(model, optimizer)
    per_rank = BATCH // runtime.world_size
    rows = slice(runtime.global_rank * per_rank, (runtime.global_rank + 1) * per_rank)
    losses, after_first = [], None
    for step in range(STEPS):
        if step == args.fail_at_step and runtime.global_rank == args.fail_rank:
            raise RuntimeError(f"deliberate failure at step {step}")
        loss = nn.functional.mse_loss(model(x[rows]), y[rows])
        optimizer.zero_grad()
        runtime.backward(loss)
        optimizer.step()
        losses.append(runtime.all_reduce(loss.detach(), op="mean").item())
        if step == 0:
            after_first = [p.detach().clone() for p in model.module.parameters()]
    final = [p.detach().clone() for p in model.module.parameters()]
    if runtime.is_global_zero:
        torch.save(
            {
                "losses": losses,
                "after_first": after_first,
                "final": final,
                "world_size": runtime.world_size,
                "strategy": runtime.plan.names["strategy"],
                "environment": runtime.plan.names["environment"],
            },
            args.out,
        )
    print(f"rank {runtime.global_rank} done", file=sys.stderr)


if __name__ == "__main__":
    main()
