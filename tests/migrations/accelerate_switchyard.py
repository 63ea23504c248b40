"""accelerate_original.py ported to switchyard (docs/migrating-from-accelerate.md).

python accelerate_switchyard.py --out result.json
switchyard run --devices 2 accelerate_switchyard.py
"""

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from switchyard import Runtime


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

    runtime = Runtime()
    runtime.launch()
    runtime.seed_everything(args.seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_loader = DataLoader(make_data(512, 1), batch_size=32, shuffle=True)
    eval_loader = DataLoader(make_data(301, 2), batch_size=64)
    model, optimizer = runtime.setup(model, optimizer)
    train_loader = runtime.setup_dataloaders(train_loader)
    eval_loader = runtime.setup_dataloaders(eval_loader, evaluation=True)

    losses, accuracies = [], []
    for epoch in range(args.epochs):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            runtime.backward(loss)
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=runtime.device)
        total = torch.zeros((), dtype=torch.long, device=runtime.device)
        for x, y in eval_loader:
            with torch.no_grad():
                predictions = model(x).argmax(dim=-1)
            correct += (predictions == y).sum()
            total += y.numel()
        correct, total = (t.item() for t in runtime.all_reduce((correct, total), op="sum"))
        runtime.print(f"epoch {epoch}: accuracy {correct}/{total}")
        accuracies.append([correct, total])
    result = {"losses": losses, "accuracies": accuracies}
    if args.out and runtime.is_global_zero:
        with open(args.out, "w") as handle:
            json.dump(result, handle)
    return result


if __name__ == "__main__":
    main()
