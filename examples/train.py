"""Train a small MLP on synthetic data through switchyard.

The four lines that differ from a plain PyTorch script are marked ``# switchyard``: create a
Runtime and launch it, set up the model, optimizer and data loader, and call
``runtime.backward(loss)``; there is no ``.to(device)`` anywhere. Around them, what a real
training script has: a progress bar (tqdm), metrics logged through switchyard's CSV logger,
an evaluation whose accuracy is the same on any number of processes, and a plot of the logged
loss at the end.

    python examples/train.py                          # CPU, one process
    python examples/train.py --precision bf16-mixed
    switchyard run --devices 2 examples/train.py      # two processes with DDP (switchyard-ddp)
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from switchyard import Runtime
from switchyard.loggers import CSVLogger


def make_data(samples: int, features: int, classes: int, seed: int) -> TensorDataset:
    """Points around one random centre per class: learnable, so the loss visibly falls. The
    centres depend on ``features`` and ``classes`` only, so a second call with another ``seed``
    draws a validation set of the same problem."""
    centres = torch.randn(classes, features, generator=torch.Generator().manual_seed(0)) * 2
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (samples,), generator=generator)
    points = centres[labels] + torch.randn(samples, features, generator=generator) * 3
    return TensorDataset(points, labels)


def make_model(features: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


@torch.no_grad()
def evaluate(runtime: Runtime, model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Accuracy and mean loss over ``loader`` (set up with ``evaluation=True``, so each sample
    is seen by exactly one process), the same on any number of processes: each process adds
    up counts, one ``all_reduce`` sums them, and only then is anything divided."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=runtime.device)
    seen = torch.zeros((), dtype=torch.long, device=runtime.device)
    loss_sum = torch.zeros((), device=runtime.device)
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
        seen += y.numel()
    correct, seen, loss_sum = runtime.all_reduce((correct, seen, loss_sum), op="sum")
    model.train()
    return correct.item() / seen.item(), loss_sum.item() / seen.item()


def plot(metrics_file: Path, out: Path) -> None:
    """The training loss (every logged step) and the validation loss (every epoch) read back
    from the CSV logger's file, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # a file, not a window: the job may run on a machine without display
    import matplotlib.pyplot as plt

    with metrics_file.open(newline="") as file:
        rows = list(csv.DictReader(file))
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for name, style in (("train_loss", "-"), ("val_loss", "o-")):
        steps = [int(row["step"]) for row in rows if row.get(name)]
        values = [float(row[name]) for row in rows if row.get(name)]
        if steps:
            axes.plot(steps, values, style, label=name.replace("_", " "))
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accelerator", default=None, help="cpu, cuda, ..., auto")
    parser.add_argument("--strategy", default=None, help="single_device, ddp, fsdp, ..., auto")
    parser.add_argument("--devices", default=None, help="count, list or auto")
    parser.add_argument("--precision", default=None, help="32-true, bf16-mixed, 16-mixed, ...")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--val-samples", type=int, default=1001, help="an odd count on purpose")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--log-every", type=int, default=16, help="steps between logged losses")
    parser.add_argument("--log-dir", default="runs/logs", help="the CSV logger's root folder")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG of the losses")
    parser.add_argument("--checkpoint", default=None, help="save the final state to this file")
    args = parser.parse_args(argv)

    features, classes = 32, 8
    runtime = Runtime(  # switchyard
        accelerator=args.accelerator,
        strategy=args.strategy,
        devices=args.devices,
        precision=args.precision,
        loggers=CSVLogger(root_dir=args.log_dir, name="train"),
    )
    runtime.launch()
    runtime.seed_everything(args.seed)
    runtime.log_hyperparams(vars(args))

    model = make_model(features, args.hidden, classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model, optimizer = runtime.setup(model, optimizer)  # switchyard
    loader = DataLoader(
        make_data(args.samples, features, classes, args.seed),
        batch_size=args.batch_size,
        shuffle=True,
    )
    loader = runtime.setup_dataloaders(loader)  # switchyard
    val_loader = runtime.setup_dataloaders(
        DataLoader(make_data(args.val_samples, features, classes, args.seed + 1), batch_size=256),
        evaluation=True,  # every validation sample counted once, whatever the process count
    )
    loss_fn = nn.CrossEntropyLoss()
    runtime.print(f"training with {runtime}")

    loss = torch.tensor(0.0)
    global_step = 0
    for epoch in range(1, args.epochs + 1):
        start, seen = time.perf_counter(), 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}",
            unit="batch",
            disable=not runtime.is_global_zero,  # one bar, not one per process
            dynamic_ncols=True,
        )
        for x, y in bar:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            runtime.backward(loss)  # switchyard
            optimizer.step()
            global_step += 1
            seen += x.shape[0] * runtime.world_size
            if global_step % args.log_every == 0:
                value = loss.item()
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{rate:,.0f}")
                runtime.log_dict({"train_loss": value, "samples_per_s": rate}, step=global_step)
        bar.close()
        accuracy, val_loss = evaluate(runtime, model, val_loader)
        runtime.log_dict({"val_loss": val_loss, "val_accuracy": accuracy}, step=global_step)
        runtime.print(
            f"epoch {epoch}: validation accuracy {accuracy:.2%} over {args.val_samples} samples, "
            f"loss {val_loss:.4f}"
        )

    if args.checkpoint:
        runtime.save(
            args.checkpoint, {"model": model, "optimizer": optimizer, "epoch": args.epochs}
        )
        runtime.print(f"saved checkpoint to {args.checkpoint}")
    if runtime.is_global_zero:
        logger = runtime.logger
        logger.save()
        metrics_file = Path(str(logger.log_dir)) / "metrics.csv"
        runtime.print(f"metrics logged to {metrics_file}")
        if not args.no_plot:
            picture = metrics_file.with_name("loss.png")
            plot(metrics_file, picture)
            runtime.print(f"loss curve plotted to {picture}")
    return float(loss.item())


if __name__ == "__main__":
    main()
