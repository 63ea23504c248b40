"""Lightning Fabric's language-model example, on synthetic WikiText2-shaped data.

Modelled on ``examples/fabric/language_model/train.py`` of Lightning-AI/pytorch-lightning
(Apache-2.0): the same functions, optimizer, gradient clipping, loops and Fabric calls.
``language_model_fabric.py`` runs it with Lightning Fabric and ``language_model_switchyard.py``
with switchyard; the two files differ only in their imports and in the line that creates
``fabric`` (``tests/migrations/fabric/test_fabric_examples.py`` checks it). What both change from
the original, and why:

* WikiText2 (a download) is replaced by ``SyntheticWikiText2`` of the same shapes, and
  ``lightning.pytorch.demos.Transformer`` by ``demo_transformer.Transformer``, its equal written
  for these tests (the switchyard side has no Lightning). ``--samples``, ``--vocab-size`` and
  ``--holdout`` and ``--max-epochs`` (default: WikiText2's sizes, the original's 2000 validation
  and test samples and 20 epochs) let a test run a few steps.
* The original calls no logger. Here ``Fabric(loggers=CSVLogger(...))`` is given one, and
  ``fabric.log``/``fabric.log_dict``/``fabric.logger`` are called the way Fabric's documentation
  shows, so that the migration of logging is exercised too.

Run: ``python language_model_fabric.py --max-epochs 1`` (or ``fabric run ...``).
"""

import argparse

import torch
import torch.nn.functional as F
from demo_transformer import Transformer
from synthetic_data import WIKITEXT2_SAMPLES, WIKITEXT2_VOCAB_SIZE, SyntheticWikiText2
from torch.utils.data import DataLoader, random_split

import switchyard as L
from switchyard.loggers import CSVLogger


def main(args: argparse.Namespace) -> None:
    L.seed_everything(42)

    fabric = L.Runtime(loggers=CSVLogger("logs", name="language_model"))

    # Data
    dataset = SyntheticWikiText2(samples=args.samples, vocab_size=args.vocab_size)
    train_dataloader, val_dataloader, _ = get_dataloaders(dataset, holdout=args.holdout)

    # Model
    model = Transformer(vocab_size=dataset.vocab_size)

    # Optimizer
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    model, optimizer = fabric.setup(model, optimizer)
    train_dataloader, val_dataloader = fabric.setup_dataloaders(train_dataloader, val_dataloader)
    train(fabric, model, optimizer, train_dataloader, val_dataloader, max_epochs=args.max_epochs)
    # loggers buffer what they are given: write it out
    fabric.logger.finalize("success")


def train(fabric, model, optimizer, train_dataloader, val_dataloader, max_epochs=20):
    for epoch in range(max_epochs):
        train_epoch(fabric, model, optimizer, train_dataloader, epoch)
        val_loss = validate(fabric, model, val_dataloader)
        fabric.print(f"val loss {val_loss.item():.4f}")
        fabric.log_dict(
            {"val_loss": val_loss, "epoch": epoch}, step=(epoch + 1) * len(train_dataloader)
        )


def train_epoch(fabric, model, optimizer, train_dataloader, epoch):
    for batch_idx, batch in enumerate(train_dataloader):
        input, target = batch
        output = model(input, target)
        loss = F.nll_loss(output, target.view(-1))
        fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, clip_val=0.25)
        optimizer.step()
        optimizer.zero_grad()
        fabric.log("train_loss", loss, step=epoch * len(train_dataloader) + batch_idx)

        if batch_idx % 200 == 0:
            fabric.print(f"epoch: {epoch} - iteration: {batch_idx} - loss {loss.item():.4f}")


@torch.no_grad()
def validate(fabric, model, val_dataloader):
    fabric.print("Validating ...")
    model.eval()
    losses = torch.zeros(len(val_dataloader))
    for k, batch in enumerate(val_dataloader):
        input, target = batch
        output = model(input, target)
        loss = F.nll_loss(output, target.view(-1))
        losses[k] = loss.item()
    out = losses.mean()
    model.train()
    return out


def get_dataloaders(dataset, holdout=2000):
    n = len(dataset)
    generator = torch.Generator().manual_seed(42)
    train_dataset, val_dataset, test_dataset = random_split(
        dataset, [n - 2 * holdout, holdout, holdout], generator=generator
    )
    train_dataloader = DataLoader(train_dataset, batch_size=20, shuffle=True)
    val_dataloader = DataLoader(val_dataset, batch_size=20, shuffle=False)
    test_dataloader = DataLoader(test_dataset, batch_size=20, shuffle=False)
    return train_dataloader, val_dataloader, test_dataloader


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Fabric language model example")
    parser.add_argument(
        "--samples",
        type=int,
        default=WIKITEXT2_SAMPLES,
        help="synthetic 35-token samples (default: WikiText2's)",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=WIKITEXT2_VOCAB_SIZE,
        help="synthetic vocabulary (default: WikiText2's)",
    )
    parser.add_argument(
        "--holdout",
        type=int,
        default=2000,
        help="validation and test samples each (default: 2000, as the original)",
    )
    parser.add_argument(
        "--max-epochs", type=int, default=20, help="epochs (default: 20, as the original)"
    )
    main(parser.parse_args())
