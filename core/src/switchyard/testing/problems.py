"""The small, deterministic problems the strategy checks train, shared by the worker processes
and the single-process reference the kit computes, so both build exactly the same thing."""

from __future__ import annotations

import torch
from torch import nn

STEPS = 5
"""Training steps of the parity check."""

ROWS_PER_PROCESS = 4
"""Rows of the global batch each process trains on; the global batch has ``4 * world_size``."""

LEARNING_RATE = 0.05

PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-5
"""Tolerance between a strategy's training on N processes and one process on the whole batch.
The two are equal in exact arithmetic (averaging the gradients of equal shards of a mean loss
gives the gradient of the whole batch); what is left is float32 summation order."""

SYNC_LEARNING_RATE = 1.0
"""The SGD learning rate of the ``no_backward_sync`` check's one step: a parameter's change in
that step is its gradient, which a strategy that keeps gradients to itself (ZeRO 2 and 3 free
``param.grad``) shows only that way."""

GRADIENT_RTOL = 1e-5
GRADIENT_ATOL = 1e-6
"""Tolerance for gradients of the ``no_backward_sync`` check (one backward, tiny model)."""


def regression_model(seed: int = 0) -> nn.Module:
    """A two-layer network, initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def regression_batch(world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch ``(x, y)`` for ``world_size`` processes, on the CPU."""
    generator = torch.Generator().manual_seed(1234)
    rows = ROWS_PER_PROCESS * world_size
    x = torch.randn(rows, 6, generator=generator)
    y = torch.randn(rows, 1, generator=generator)
    return x, y


def shard(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    """Rank ``rank``'s rows of a global batch."""
    return tensor[rank * ROWS_PER_PROCESS : (rank + 1) * ROWS_PER_PROCESS]


def reference_training(world_size: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Plain PyTorch in this process on the whole batch: the loss of each step and the final
    parameters, which the strategy's N processes must reproduce."""
    model = regression_model()
    x, y = regression_batch(world_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    losses = []
    for _ in range(STEPS):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def sync_model(seed: int = 3) -> nn.Module:
    """The model of the ``no_backward_sync`` check."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(4, 2)


def sync_input(rank: int) -> torch.Tensor:
    """Rank-dependent input, so that unsynchronised gradients differ between ranks."""
    return torch.arange(8, dtype=torch.float32).reshape(2, 4) * (rank + 1) / 8 + rank
