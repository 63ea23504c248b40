"""mnist_raw.py ported to switchyard (docs/migrating-from-ddp.md): the device choice, the
``.to(device)`` calls and ``loss.backward()`` go to the Runtime, and the test loop reduces its
sums across processes (docs/evaluation.md), so it prints the same on one process or many.

    python mnist_switchyard.py --epochs 2
    switchyard run --devices 2 mnist_switchyard.py --epochs 2
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import TensorDataset

from switchyard import Runtime


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def synthetic_mnist(samples, seed):
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(samples, 1, 28, 28, generator=generator) - 0.1307) / 0.3081
    return TensorDataset(images, torch.randint(0, 10, (samples,), generator=generator))


def train(args, runtime, model, train_loader, optimizer, epoch, losses):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        runtime.backward(loss)
        optimizer.step()
        losses.append(loss.item())
        if batch_idx % args.log_interval == 0:
            runtime.print(
                f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)}]"
                f"\tLoss: {loss.item():.6f}"
            )


def test(runtime, model, test_loader):
    model.eval()
    test_loss = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), dtype=torch.long, device=runtime.device)
    with torch.no_grad():
        for data, target in test_loader:
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum")
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum()
    test_loss, correct = runtime.all_reduce((test_loss, correct), op="sum")
    test_loss, correct = test_loss.item() / len(test_loader.dataset), correct.item()
    runtime.print(
        f"\nTest set: Average loss: {test_loss:.4f}, Accuracy: {correct}/{len(test_loader.dataset)}\n"
    )
    return test_loss, correct


def main(argv=None):
    parser = argparse.ArgumentParser(description="PyTorch MNIST Example")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--test-batch-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--accelerator", default=None, help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--test-samples", type=int, default=301)
    args = parser.parse_args(argv)

    runtime = Runtime(accelerator=args.accelerator)
    runtime.launch()
    torch.manual_seed(args.seed)

    dataset1 = synthetic_mnist(args.samples, seed=10)
    dataset2 = synthetic_mnist(args.test_samples, seed=20)
    train_loader = torch.utils.data.DataLoader(dataset1, batch_size=args.batch_size)
    test_loader = torch.utils.data.DataLoader(dataset2, batch_size=args.test_batch_size)
    train_loader = runtime.setup_dataloaders(train_loader)
    test_loader = runtime.setup_dataloaders(test_loader, evaluation=True)

    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    model, optimizer = runtime.setup(model, optimizer)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    losses, tests = [], []
    for epoch in range(1, args.epochs + 1):
        train(args, runtime, model, train_loader, optimizer, epoch, losses)
        tests.append(test(runtime, model, test_loader))
        scheduler.step()
    return {"losses": losses, "tests": tests}


if __name__ == "__main__":
    main()
