"""One process of a launch-latency job: set up, take one training step, record when.

    python -m torch.distributed.run ... -m benchmarks.workers.launch --kind raw --out DIR
    python -m switchyard run --devices 2 -m benchmarks.workers.launch --kind switchyard --out DIR
    python -m benchmarks.workers.launch --kind switchyard --out DIR   # runtime.launch()

``raw`` is plain PyTorch DDP (``init_process_group("gloo")``, ``DistributedDataParallel``, a
``DataLoader`` with a ``DistributedSampler``, ``AdamW``); ``switchyard`` is the same training
through ``Runtime(accelerator="cpu", strategy="ddp", devices=2)``. Every rank writes
``DIR/rank<N>.json`` with ``time.time()`` at each phase (process created, module started,
imports done, process group ready, set up, first step done on every rank, torn down) and its
peak resident set size."""

from __future__ import annotations

import time

MODULE_STARTED = time.time()  # before anything else: the worker's own code begins here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

PHASES = (
    "process_started",
    "module_started",
    "imported",
    "group_ready",
    "set_up",
    "first_step",
    "torn_down",
)
"""What each rank records, in order; ``first_step`` is after the first ``optimizer.step()``
and a barrier."""


def process_start_time() -> float | None:
    """When this process was created (``time.time()`` scale, 10 ms resolution), or ``None``
    where ``/proc`` does not tell."""
    try:
        stat = Path("/proc/self/stat").read_text()
        # field 22 (starttime, clock ticks since boot) counts after the ")" closing the name
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        # boot time from the uptime (10 ms resolution), not /proc/stat's btime (whole seconds)
        booted = time.time() - float(Path("/proc/uptime").read_text().split()[0])
        return booted + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def worker(kind: str, out: Path) -> None:
    """Set up, run one training step and write this rank's times to ``out``."""
    times: dict[str, float | None] = {
        "process_started": process_start_time(),
        "module_started": MODULE_STARTED,
    }
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    runtime: Any = None
    if kind == "raw":
        times["imported"] = time.time()
        dist.init_process_group("gloo")
    else:
        from switchyard import Runtime

        times["imported"] = time.time()
        runtime = Runtime(accelerator="cpu", strategy="ddp", devices=2)
        runtime.launch()  # the in-script launcher: the launching process ends in here
    times["group_ready"] = time.time()
    rank, world = dist.get_rank(), dist.get_world_size()

    generator = torch.Generator().manual_seed(1)
    dataset = TensorDataset(
        torch.randn(4096, 128, generator=generator),
        torch.randint(0, 10, (4096,), generator=generator),
    )
    torch.manual_seed(0)
    model: nn.Module = nn.Sequential(
        nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    optimizer: Any = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if runtime is None:
        model = DistributedDataParallel(model)
        sampler: DistributedSampler[Any] = DistributedSampler(dataset, world, rank, seed=0)
        sampler.set_epoch(0)
        loader: Any = DataLoader(dataset, batch_size=64, sampler=sampler)
    else:
        model, optimizer = runtime.setup(model, optimizer)
        loader = runtime.setup_dataloaders(DataLoader(dataset, batch_size=64, shuffle=True))
    times["set_up"] = time.time()

    x, y = next(iter(loader))
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    if runtime is None:
        loss.backward()
    else:
        runtime.backward(loss)
    optimizer.step()
    dist.barrier()
    times["first_step"] = time.time()

    if runtime is None:
        dist.destroy_process_group()
    else:
        runtime.teardown()
    times["torn_down"] = time.time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    tmp = out / f"rank{rank}.tmp"
    tmp.write_text(json.dumps({"rank": rank, "world_size": world, "peak_rss_bytes": peak, **times}))
    tmp.replace(out / f"rank{rank}.json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one process of a launch-latency job")
    parser.add_argument("--kind", choices=("raw", "switchyard"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    worker(args.kind, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
