"""The four-line change works end to end on the CPU."""

import torch
from torch import nn

from switchyard import Runtime


def test_one_training_step_changes_parameters():
    runtime = Runtime(accelerator="cpu", devices=1)
    runtime.launch()
    model = nn.Linear(4, 2)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = runtime.setup(model, optimizer)
    loss = model(torch.randn(8, 4)).pow(2).mean()
    runtime.backward(loss)
    optimizer.step()
    assert not torch.equal(before, model.module.weight)
