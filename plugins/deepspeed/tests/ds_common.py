"""Model and data shared by the deepspeed tests and the scripts they run in real processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import nn

GLOBAL_BATCH = 8
STEPS = 10
SAVE_AT = 5
LR = 1e-2
WEIGHT_DECAY = 0.01
WARMUP_MIN_LR = LR / 10
WARMUP_STEPS = 4
WARMUP = {
    "warmup_min_lr": WARMUP_MIN_LR,
    "warmup_max_lr": LR,
    "warmup_num_steps": WARMUP_STEPS,
    "warmup_type": "linear",
}
"""DeepSpeed's WarmupLR settings of the config-optimizer run."""


NVME_WIDTH = 1024
"""The hidden width of the NVMe-offload run: its middle layer's half per process (2 MiB) is over
DeepSpeed's 1 MiB floor below which tensors stay in memory rather than being swapped."""


def make_model(width: int | None = None) -> nn.Module:
    """The MLP every run trains; ``width`` defaults to ``DS_TEST_WIDTH`` or 32."""
    if width is None:
        width = int(os.environ.get("DS_TEST_WIDTH", "32"))
    torch.manual_seed(1234)
    return nn.Sequential(
        nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3)
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


def warmup_lrs() -> list[float]:
    """The learning rate of each step under WARMUP, from DeepSpeed's WarmupLR: linear from the
    minimum to the maximum over ``warmup_num_steps``, then the maximum. It starts at iteration
    -1 (the minimum) and the engine steps it after each optimizer step, so step ``s`` runs at
    iteration ``s - 1``, whose fraction of the warm-up is ``max(0, s - 1) / warmup_num_steps``
    (iterations -1 and 0 both at the minimum)."""
    span = LR - WARMUP_MIN_LR
    return [
        WARMUP_MIN_LR + span * min(1.0, max(0, step - 1) / WARMUP_STEPS) for step in range(STEPS)
    ]


def reference_losses(lrs: list[float] | None = None, width: int | None = None) -> list[float]:
    """The losses of one process training on the whole global batches with torch's AdamW (at
    ``lrs[step]`` in each step, if given)."""
    model = make_model(width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    losses = []
    for step, (x, y) in enumerate(batches()):
        if lrs is not None:
            for group in optimizer.param_groups:
                group["lr"] = lrs[step]
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses
