"""The model, data and plain-PyTorch reference the XLA tests train."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HAS_TORCH_XLA = importlib.util.find_spec("torch_xla") is not None
NEEDS_TORCH_XLA = "needs torch_xla: scripts/test-xla"

STEPS = 5
LR = 0.05
BATCH = 8


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH * STEPS, 6, generator=generator)
    y = torch.randn(BATCH * STEPS, 1, generator=generator)
    return x, y


def loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    return DataLoader(TensorDataset(*data()), batch_size=BATCH, shuffle=False)


def eager_cpu_losses() -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of plain PyTorch on the CPU, and the parameters it ends with."""
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    losses = []
    for x, y in loader():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in net.state_dict().items()}
