"""Trains the test problem with ``xla_spmd`` over every XLA device (run with PJRT_DEVICE=CPU
and CPU_NUM_DEVICES=2) and prints what test_spmd.py checks, as JSON.

A script of its own: SPMD mode is switched on for a whole process, before its first XLA tensor.
Usage: python spmd_train.py CHECKPOINT_FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch_xla
import torch_xla.runtime as xr
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import xla_problems as problems

from switchyard import Runtime


def run(layout: str, folder: Path) -> dict[str, object]:
    from switchyard_xla.spmd import XLASPMDStrategy

    runtime = Runtime(accelerator="xla", strategy=XLASPMDStrategy(parameters=layout), devices=1)
    net = problems.model()
    optimizer = torch.optim.SGD(net.parameters(), lr=problems.LR)
    model, optimizer = runtime.setup(net, optimizer)
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    losses, batch_shardings = [], []
    for x, y in runtime.setup_dataloaders(problems.loader()):
        batch_shardings.append(torch_xla._XLAC._get_xla_sharding_spec(x))
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        runtime.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    path = folder / f"{layout}.pt"
    runtime.save(path, {"model": model})
    saved = torch.load(path, weights_only=True)["model"]
    return {
        "devices": int(xr.global_runtime_device_count()),
        "losses": losses,
        "optimizer_holds_module_parameters": [id(p) for p in stepped]
        == [id(p) for p in net.parameters()],
        "batch_shardings": batch_shardings,
        "weight_sharding": torch_xla._XLAC._get_xla_sharding_spec(net[0].weight),
        "saved_shapes": {k: list(v.shape) for k, v in saved.items()},
        "saved_matches_model": all(
            torch.equal(v, net.state_dict()[k].cpu()) for k, v in saved.items()
        ),
    }


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    print(json.dumps({layout: run(layout, folder) for layout in ("replicated", "sharded")}))
