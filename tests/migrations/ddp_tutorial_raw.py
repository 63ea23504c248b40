"""pytorch/examples' DDP tutorial (distributed/ddp-tutorial-series/multigpu.py) as its users run
it, on the CPU: ``mp.spawn`` of one process per device, gloo for nccl, no ``.to(gpu_id)``.

Kept from the original: its Trainer, MyTrainDataset of 2048 random (20 -> 1) samples,
``Linear(20, 1)``, SGD at 1e-3, ``DistributedSampler`` with ``shuffle=False``, the checkpoint
of ``model.module`` saved by rank 0. Changed so that a test can compare runs: the data and the
model are seeded, the loss is ``mse_loss`` (the original's ``cross_entropy`` of one output
column is 0 whatever the weights, so its losses would compare nothing) and every step's loss is
written to ``--out``/``losses-<rank>.json``. ``--world-size`` replaces
``torch.cuda.device_count()``; ``--port`` the hard-coded 12355.

    python ddp_tutorial_raw.py 2 1 --world-size 2 --out DIR
"""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class MyTrainDataset(Dataset):
    def __init__(self, size):
        self.size = size
        self.data = [(torch.rand(20), torch.rand(1)) for _ in range(size)]

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return self.data[index]


def ddp_setup(rank, world_size, port):
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = str(port)
    init_process_group(backend="gloo", rank=rank, world_size=world_size)


class Trainer:
    def __init__(self, model, train_data, optimizer, gpu_id, save_every, out):
        self.gpu_id = gpu_id
        self.model = DDP(model)
        self.train_data = train_data
        self.optimizer = optimizer
        self.save_every = save_every
        self.out = out
        self.losses = []

    def _run_batch(self, source, targets):
        self.optimizer.zero_grad()
        output = self.model(source)
        loss = F.mse_loss(output, targets)
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())

    def _run_epoch(self, epoch):
        self.train_data.sampler.set_epoch(epoch)
        for source, targets in self.train_data:
            self._run_batch(source, targets)

    def _save_checkpoint(self, epoch):
        torch.save(self.model.module.state_dict(), self.out / "checkpoint.pt")

    def train(self, max_epochs):
        for epoch in range(max_epochs):
            self._run_epoch(epoch)
            if self.gpu_id == 0 and epoch % self.save_every == 0:
                self._save_checkpoint(epoch)


def load_train_objs():
    torch.manual_seed(0)
    train_set = MyTrainDataset(2048)
    model = torch.nn.Linear(20, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    return train_set, model, optimizer


def prepare_dataloader(dataset, batch_size):
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, sampler=DistributedSampler(dataset)
    )


def main(rank, world_size, save_every, total_epochs, batch_size, out, port):
    ddp_setup(rank, world_size, port)
    dataset, model, optimizer = load_train_objs()
    train_data = prepare_dataloader(dataset, batch_size)
    trainer = Trainer(model, train_data, optimizer, rank, save_every, Path(out))
    trainer.train(total_epochs)
    (Path(out) / f"losses-{rank}.json").write_text(json.dumps(trainer.losses))
    destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="simple distributed training job")
    parser.add_argument("total_epochs", type=int)
    parser.add_argument("save_every", type=int)
    parser.add_argument("--batch_size", default=32, type=int)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--port", type=int, default=12355)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    mp.spawn(
        main,
        args=(
            args.world_size,
            args.save_every,
            args.total_epochs,
            args.batch_size,
            args.out,
            args.port,
        ),
        nprocs=args.world_size,
    )
