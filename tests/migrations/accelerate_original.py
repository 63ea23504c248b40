"""A typical Hugging Face Accelerate training script: ``accelerator.prepare``,
``accelerator.backward``, ``gather_for_metrics`` in evaluation, ``accelerator.print``. Runs
only where ``accelerate`` is installed (its own environment: scripts/engine-env accelerate);
accelerate_switchyard.py is its port and accelerate_torch.py the same in plain PyTorch.

    python accelerate_original.py --out result.json
"""

import argparse
import json

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_data(samples, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 16, generator=generator)
    y = (x[:, :4].sum(dim=1) > 0).long() + (x[:, 4] > 1).long()
    return TensorDataset(x, y)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    accelerator = Accelerator()
    set_seed(args.seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_loader = DataLoader(make_data(512, 1), batch_size=32, shuffle=True)
    eval_loader = DataLoader(make_data(301, 2), batch_size=64)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(
        model, optimizer, train_loader, eval_loader
    )

    losses, accuracies = [], []
    for epoch in range(args.epochs):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        correct = total = 0
        for x, y in eval_loader:
            with torch.no_grad():
                predictions = model(x).argmax(dim=-1)
            predictions, y = accelerator.gather_for_metrics((predictions, y))
            correct += (predictions == y).sum().item()
            total += y.numel()
        accelerator.print(f"epoch {epoch}: accuracy {correct}/{total}")
        accuracies.append([correct, total])
    result = {"losses": losses, "accuracies": accuracies}
    if args.out and accelerator.is_main_process:
        with open(args.out, "w") as handle:
            json.dump(result, handle)
    return result


if __name__ == "__main__":
    main()
