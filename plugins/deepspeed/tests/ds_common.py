"""Model and data shared by the deepspeed tests and the scripts they run in real processes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

GLOBAL_BATCH = 8
STEPS = 10
SAVE_AT = 5
LR = 1e-2
WEIGHT_DECAY = 0.01


def make_model() -> nn.Module:
    torch.manual_seed(1234)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )


def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS global batches, the same in every process (each takes its share by rank)."""
    generator = torch.Generator().manual_seed(99)
    for _ in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, 16, generator=generator)
        y = torch.randint(0, 3, (GLOBAL_BATCH,), generator=generator)
        yield x, y


def probe_input() -> torch.Tensor:
    return torch.randn(4, 16, generator=torch.Generator().manual_seed(7))


def reference_losses() -> list[float]:
    """The losses of one process training on the whole global batches with torch's AdamW."""
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    losses = []
    for x, y in batches():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses
