"""Lightning Fabric's image classifier example, on synthetic MNIST-shaped data.

Modelled on ``examples/fabric/image_classifier/train_fabric.py`` of Lightning-AI/pytorch-lightning
(Apache-2.0): the same network, optimizer, scheduler, loops, arguments and Fabric calls.
``image_classifier_fabric.py`` runs it with Lightning Fabric and ``image_classifier_switchyard.py``
with switchyard; the two files differ only in their imports and in the line that creates
``fabric`` (``tests/migrations/fabric/test_fabric_examples.py`` checks it). What both change from
the original, and why:

* MNIST (a download) is replaced by ``SyntheticMNIST`` of the same shapes; ``--train-samples``
  and ``--test-samples`` (default: MNIST's sizes) let a test run a few steps.
* torchmetrics' ``Accuracy`` (not part of Fabric) is replaced by the count the original shows in
  a comment, gathered from every process with ``fabric.all_gather`` as the test loss is.
* The original calls no logger. Here ``Fabric(loggers=CSVLogger(...))`` is given one, and
  ``fabric.log``/``fabric.log_dict``/``fabric.logger`` are called the way Fabric's documentation
  shows, so that the migration of logging is exercised too.
* The test result is printed with ``fabric.print`` (once), not ``print`` (once per process).
* ``fabric.save`` takes ``(path, state)``; the original passes them the other way round.

Run: ``python image_classifier_fabric.py --epochs 1`` (or ``fabric run ...``).
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from lightning.fabric import Fabric, seed_everything
from lightning.fabric.loggers import CSVLogger
from synthetic_data import MNIST_TEST_SIZE, MNIST_TRAIN_SIZE, SyntheticMNIST
from torch.optim.lr_scheduler import StepLR


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def run(hparams: argparse.Namespace) -> None:
    # accelerator, strategy, devices... come from the command line that started the script
    fabric = Fabric(loggers=CSVLogger("logs", name="image_classifier"))

    seed_everything(hparams.seed)

    # rank 0 would download MNIST first; the synthetic data needs no download, the call stays
    with fabric.rank_zero_first(local=False):
        train_dataset = SyntheticMNIST(hparams.train_samples, train=True)
        test_dataset = SyntheticMNIST(hparams.test_samples, train=False)

    train_loader = torch.utils.data.DataLoader(train_dataset, batch_size=hparams.batch_size)
    test_loader = torch.utils.data.DataLoader(test_dataset, batch_size=hparams.batch_size)
    train_loader, test_loader = fabric.setup_dataloaders(train_loader, test_loader)

    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=hparams.lr)
    model, optimizer = fabric.setup(model, optimizer)

    scheduler = StepLR(optimizer, step_size=1, gamma=hparams.gamma)

    for epoch in range(1, hparams.epochs + 1):
        model.train()
        for batch_idx, (data, target) in enumerate(train_loader):
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            fabric.backward(loss)
            optimizer.step()
            fabric.log("train_loss", loss, step=(epoch - 1) * len(train_loader) + batch_idx)
            if (batch_idx == 0) or ((batch_idx + 1) % hparams.log_interval == 0):
                print(
                    f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)}"
                    f" ({100.0 * batch_idx / len(train_loader):.0f}%)]\tLoss: {loss.item():.6f}"
                )
                if hparams.dry_run:
                    break

        scheduler.step()

        model.eval()
        test_loss = 0.0
        correct = 0
        with torch.no_grad():
            for data, target in test_loader:
                output = model(data)
                test_loss += F.nll_loss(output, target, reduction="sum").item()
                pred = output.argmax(dim=1, keepdim=True)
                correct += pred.eq(target.view_as(pred)).sum().item()
                if hparams.dry_run:
                    break

        # every process evaluated its own share of the test set: add them up
        test_loss = fabric.all_gather(test_loss).sum() / len(test_loader.dataset)
        test_acc = fabric.all_gather(correct).sum() / len(test_loader.dataset)

        fabric.print(
            f"\nTest set: Average loss: {test_loss:.4f}, Accuracy: ({100 * test_acc:.0f}%)\n"
        )
        fabric.log_dict(
            {"test_loss": test_loss, "test_acc": test_acc}, step=epoch * len(train_loader)
        )

        if hparams.dry_run:
            break

    if hparams.save_model:
        fabric.save("mnist_cnn.pt", model.state_dict())
    # loggers buffer what they are given: write it out
    fabric.logger.finalize("success")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Fabric MNIST Example")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="input batch size for training (default: 64)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=14,
        metavar="N",
        help="number of epochs to train (default: 14)",
    )
    parser.add_argument(
        "--lr", type=float, default=1.0, metavar="LR", help="learning rate (default: 1.0)"
    )
    parser.add_argument(
        "--gamma",
        type=float,
        default=0.7,
        metavar="M",
        help="learning rate step gamma (default: 0.7)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", default=False, help="quickly check a single pass"
    )
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default: 1)")
    parser.add_argument(
        "--log-interval",
        type=int,
        default=10,
        metavar="N",
        help="how many batches to wait before logging training status",
    )
    parser.add_argument(
        "--save-model", action="store_true", default=False, help="save the trained model"
    )
    parser.add_argument(
        "--train-samples",
        type=int,
        default=MNIST_TRAIN_SIZE,
        metavar="N",
        help="synthetic training samples (default: MNIST's 60000)",
    )
    parser.add_argument(
        "--test-samples",
        type=int,
        default=MNIST_TEST_SIZE,
        metavar="N",
        help="synthetic test samples (default: MNIST's 10000)",
    )
    hparams = parser.parse_args()

    run(hparams)
