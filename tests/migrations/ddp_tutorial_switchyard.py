"""ddp_tutorial_raw.py ported to switchyard (docs/migrating-from-ddp.md): the same Trainer and
data, with the process handling, ``DistributedSampler``, ``DDP(...)`` and ``torch.save`` handed
to the Runtime. One process: ``python ddp_tutorial_switchyard.py 2 1 --out DIR``; two:
``switchyard run --devices 2 ddp_tutorial_switchyard.py 2 1 --out DIR``.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from switchyard import Runtime


class MyTrainDataset(Dataset):
    def __init__(self, size):
        self.size = size
        self.data = [(torch.rand(20), torch.rand(1)) for _ in range(size)]

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return self.data[index]


class Trainer:
    def __init__(self, runtime, model, train_data, optimizer, save_every, out):
        self.runtime = runtime
        self.model = model
        self.train_data = train_data
        self.optimizer = optimizer
        self.save_every = save_every
        self.out = out
        self.losses = []

    def _run_batch(self, source, targets):
        self.optimizer.zero_grad()
        output = self.model(source)
        loss = F.mse_loss(output, targets)
        self.runtime.backward(loss)
        self.optimizer.step()
        self.losses.append(loss.item())

    def _run_epoch(self, epoch):
        for source, targets in self.train_data:
            self._run_batch(source, targets)

    def _save_checkpoint(self, epoch):
        self.runtime.save(self.out / "checkpoint.pt", {"model": self.model})

    def train(self, max_epochs):
        for epoch in range(max_epochs):
            self._run_epoch(epoch)
            if epoch % self.save_every == 0:
                self._save_checkpoint(epoch)


def load_train_objs():
    torch.manual_seed(0)
    train_set = MyTrainDataset(2048)
    model = torch.nn.Linear(20, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    return train_set, model, optimizer


def main(save_every, total_epochs, batch_size, out, strategy):
    runtime = Runtime(accelerator="cpu", strategy=strategy)
    runtime.launch()
    dataset, model, optimizer = load_train_objs()
    model, optimizer = runtime.setup(model, optimizer)
    # shuffle=True: the tutorial's DistributedSampler shuffles (its default), and so does the
    # one setup_dataloaders puts in place, with the same seed (0) and epochs
    train_data = runtime.setup_dataloaders(DataLoader(dataset, batch_size=batch_size, shuffle=True))
    trainer = Trainer(runtime, model, train_data, optimizer, save_every, Path(out))
    trainer.train(total_epochs)
    (Path(out) / f"losses-{runtime.global_rank}.json").write_text(json.dumps(trainer.losses))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="simple distributed training job")
    parser.add_argument("total_epochs", type=int)
    parser.add_argument("save_every", type=int)
    parser.add_argument("--batch_size", default=32, type=int)
    parser.add_argument("--out", default=".")
    parser.add_argument("--strategy", default=None, help="default: switchyard run's, or auto")
    args = parser.parse_args()
    main(args.save_every, args.total_epochs, args.batch_size, args.out, args.strategy)
