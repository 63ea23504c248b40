"""Exercise the Runtime's distributed API in 2 processes started by ddp_spawn; rank 0's
observations are written to OUT with torch.save."""

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from switchyard import Runtime


def main(runtime: Runtime, out: str) -> dict:
    rank = runtime.global_rank
    seen: dict = {"world_size": runtime.world_size, "rank": rank}
    value = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
    seen["sum"] = runtime.all_reduce(value, op="sum")
    seen["mean"] = runtime.all_reduce(value, op="mean")
    seen["max"] = runtime.all_reduce(value, op="max")
    seen["min"] = runtime.all_reduce(value, op="min")
    seen["nested"] = runtime.all_gather(
        {"a": torch.tensor([rank, rank]), "b": [torch.tensor(rank * 2.0)]}
    )
    seen["broadcast"] = runtime.broadcast({"from": rank, "list": [rank] * 3}, src=1)
    runtime.barrier()

    # the data loader is split between processes and reshuffled every epoch
    dataset = TensorDataset(torch.arange(20.0).unsqueeze(1))
    loader = runtime.setup_dataloaders(DataLoader(dataset, batch_size=5, shuffle=True))
    seen["sampler_is_distributed"] = isinstance(loader.sampler, DistributedSampler)
    epochs = []
    for _ in range(2):
        epochs.append(torch.cat([batch[0].flatten() for batch in loader]))
    seen["epoch_items"] = runtime.all_gather(torch.stack(epochs))  # [world, epochs, items]

    # no_backward_sync: gradients stay local inside, are averaged outside
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = runtime.setup(model, optimizer)
    x = torch.full((2, 3), float(rank + 1))
    with runtime.no_backward_sync(model):
        runtime.backward(model(x).sum())
    seen["grad_unsynced"] = runtime.all_gather(model.module.weight.grad.clone())
    optimizer.zero_grad()
    runtime.backward(model(x).sum())
    seen["grad_synced"] = runtime.all_gather(model.module.weight.grad.clone())

    # rank_zero_first: rank 0 finishes the block before the others start it
    order = []
    with runtime.rank_zero_first():
        order.append(("enter", rank))
    marker = torch.tensor(float(rank))
    seen["after_rank_zero_first"] = runtime.all_reduce(marker, op="sum")

    # checkpoint: written once, by rank 0, readable by all
    runtime.save(out + ".ckpt", {"model": model, "optimizer": optimizer, "step": 7})
    state = {"model": model, "optimizer": optimizer, "step": 0}
    runtime.load(out + ".ckpt", state)
    seen["loaded_step"] = runtime.all_gather(torch.tensor(state["step"]))
    runtime.print(f"printed by rank {rank}")
    if rank == 0:
        torch.save(seen, out)
    return {"returned_by": rank}


if __name__ == "__main__":
    runtime = Runtime(accelerator="cpu", strategy="ddp_spawn", devices=2)
    result = runtime.launch(main, sys.argv[1])
    print(f"launch returned {result}")
