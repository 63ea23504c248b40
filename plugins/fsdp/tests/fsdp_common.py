"""Model, data and training loop shared by the scripts the FSDP tests run in real processes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

GLOBAL_BATCH = 8
STEPS = 20
SAVE_AT = 10


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.fc(x))


class Net(nn.Module):
    """16 -> 32 -> 2 residual blocks -> 3 classes; the 3-row output layer shards unevenly."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.blocks = nn.ModuleList([Block(32) for _ in range(2)])
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def make_model() -> Net:
    torch.manual_seed(1234)
    return Net()


def make_loader(world_size: int) -> DataLoader:
    generator = torch.Generator().manual_seed(99)
    x = torch.randn(GLOBAL_BATCH * STEPS, 16, generator=generator)
    y = torch.randint(0, 3, (GLOBAL_BATCH * STEPS,), generator=generator)
    # every process takes GLOBAL_BATCH / world_size samples of each global batch, so one
    # process and two see the same global batches
    return DataLoader(TensorDataset(x, y), batch_size=GLOBAL_BATCH // world_size, shuffle=True)


def train(
    runtime: Any,
    model: Any,
    optimizer: Any,
    loader: Any,
    start: int,
    stop: int,
    on_step: Any = None,
) -> tuple[list[float], list[float]]:
    """Steps start..stop-1 of the single epoch; returns the global losses and gradient norms."""
    losses, norms = [], []
    for step, (x, y) in enumerate(loader):
        if step < start:
            continue
        if step >= stop:
            break
        loss = nn.functional.cross_entropy(model(x), y)
        runtime.backward(loss)
        norm = runtime.clip_gradients(model, optimizer, max_norm=0.5)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(runtime.all_reduce(loss.detach(), "mean")))
        norms.append(float(norm))
        if on_step is not None:
            on_step(step + 1)
    return losses, norms


def write_report(path: str | os.PathLike[str], report: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(report))
