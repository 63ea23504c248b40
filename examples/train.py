"""Train a small MLP on synthetic data through switchyard.

The four lines that differ from a plain PyTorch script are marked ``# switchyard``: create a
Runtime and launch it, set up the model, optimizer and data loader, and call
``runtime.backward(loss)``; there is no ``.to(device)`` anywhere.

    python examples/train.py                          # CPU, one process
    python examples/train.py --precision bf16-mixed
    switchyard run --devices 2 examples/train.py      # two processes with DDP (switchyard-ddp)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from switchyard import Runtime


def make_data(samples: int, features: int, classes: int, seed: int) -> TensorDataset:
    """Points around one random centre per class: learnable, so the loss visibly falls."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=generator) * 2
    labels = torch.randint(0, classes, (samples,), generator=generator)
    points = centres[labels] + torch.randn(samples, features, generator=generator)
    return TensorDataset(points, labels)


def make_model(features: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


def progress(runtime: Runtime, epoch: int, step: int, total: int, loss: float, rate: float) -> None:
    if not runtime.is_global_zero:
        return
    width = 30
    done = int(width * step / total)
    bar = "#" * done + "-" * (width - done)
    end = "\n" if step == total else ""
    sys.stdout.write(
        f"\repoch {epoch} [{bar}] {step}/{total} loss {loss:.4f} {rate:,.0f} samples/s{end}"
    )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accelerator", default=None, help="cpu, cuda, ..., auto")
    parser.add_argument("--strategy", default=None, help="single_device, ddp, fsdp, ..., auto")
    parser.add_argument("--devices", default=None, help="count, list or auto")
    parser.add_argument("--precision", default=None, help="32-true, bf16-mixed, 16-mixed, ...")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--checkpoint", default=None, help="save the final state to this file")
    args = parser.parse_args(argv)

    features, classes = 32, 8
    runtime = Runtime(  # switchyard
        accelerator=args.accelerator,
        strategy=args.strategy,
        devices=args.devices,
        precision=args.precision,
    )
    runtime.launch()
    runtime.seed_everything(args.seed)

    model = make_model(features, args.hidden, classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model, optimizer = runtime.setup(model, optimizer)  # switchyard
    loader = DataLoader(
        make_data(args.samples, features, classes, args.seed),
        batch_size=args.batch_size,
        shuffle=True,
    )
    loader = runtime.setup_dataloaders(loader)  # switchyard
    loss_fn = nn.CrossEntropyLoss()
    runtime.print(f"training with {runtime}")

    loss = torch.tensor(0.0)
    for epoch in range(1, args.epochs + 1):
        start, seen = time.perf_counter(), 0
        for step, (x, y) in enumerate(loader, start=1):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            runtime.backward(loss)  # switchyard
            optimizer.step()
            seen += x.shape[0] * runtime.world_size
            if step % 16 == 0 or step == len(loader):
                rate = seen / (time.perf_counter() - start)
                progress(runtime, epoch, step, len(loader), loss.item(), rate)
        epoch_loss = runtime.all_reduce(loss.detach(), op="mean").item()
        runtime.print(f"epoch {epoch}: mean final-batch loss across processes {epoch_loss:.4f}")

    if args.checkpoint:
        runtime.save(
            args.checkpoint, {"model": model, "optimizer": optimizer, "epoch": args.epochs}
        )
        runtime.print(f"saved checkpoint to {args.checkpoint}")
    return float(loss.item())


if __name__ == "__main__":
    main()
