"""One distributed training job of a benchmark: one or more training loops side by side in the
same processes, timed in alternating blocks.

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        -m benchmarks.workers.train --strategy ddp --loops raw,raw,switchyard \\
        --workload '{...}' --out job.json

``--strategy`` is how the model is distributed: ``ddp`` (DistributedDataParallel), ``fsdp``
(FSDP2, ``fully_shard`` on every ``nn.Linear`` and then the root) or ``zero1``/``zero2``/
``zero3`` (DeepSpeed's ZeRO stages). ``--loops`` names the programs that train, each its own
model from the same seed on the same data: ``raw`` (plain PyTorch or plain DeepSpeed),
``switchyard``, ``fabric`` (Lightning Fabric) or ``accelerate``; ``raw`` may appear twice, the
second one being the A/A loop that measures the noise floor. At most one loop is not ``raw``: it
creates the process group, and the raw loops use the same default group.

After ``warmup_steps`` untimed steps of every loop, ``blocks`` rounds of ``block_steps`` steps of
every loop follow, each block between two barriers, the loops' order rotating from one round to
the next. Rank zero writes, for every rank: each block's wall and CPU time, the wall time of the
whole timed span, a SHA-256 of each loop's final parameters (this rank's shard where sharded),
the peak resident set size (``ru_maxrss``), the resident size before any model existed, and the
bytes of the tensors allocated after training (a census of the garbage collector's objects:
module parameters, gradients, optimizer states and an engine's flat buffers, each storage once,
whether resident or not)."""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

STRATEGIES = ("ddp", "fsdp", "zero1", "zero2", "zero3")
PROGRAMS = ("raw", "switchyard", "fabric", "accelerate")


@dataclass(frozen=True)
class Workload:
    """An MLP ``features -> hidden (x layers) -> classes`` trained with AdamW on a synthetic
    classification set, ``batch`` rows per rank and step; and how long each loop is timed."""

    features: int = 128
    hidden: int = 256
    layers: int = 2
    classes: int = 10
    batch: int = 64
    samples: int = 8192
    warmup_steps: int = 50
    blocks: int = 12
    block_steps: int = 50
    lr: float = 1e-3
    seed: int = 0

    def describe(self) -> str:
        """The model and data in words, for the report."""
        widths = "-".join(str(self.hidden) for _ in range(self.layers))
        return (
            f"MLP {self.features}-{widths}-{self.classes}, batch {self.batch} per rank, "
            f"{self.samples} samples, AdamW(lr={self.lr})"
        )


def make_model(w: Workload) -> nn.Module:
    torch.manual_seed(w.seed)
    layers: list[nn.Module] = [nn.Linear(w.features, w.hidden), nn.ReLU()]
    for _ in range(w.layers - 1):
        layers += [nn.Linear(w.hidden, w.hidden), nn.ReLU()]
    layers.append(nn.Linear(w.hidden, w.classes))
    return nn.Sequential(*layers)


def make_dataset(w: Workload) -> TensorDataset:
    generator = torch.Generator().manual_seed(w.seed + 1)
    centres = torch.randn(w.classes, w.features, generator=generator) * 2
    labels = torch.randint(0, w.classes, (w.samples,), generator=generator)
    points = centres[labels] + torch.randn(w.samples, w.features, generator=generator)
    return TensorDataset(points, labels)


def deepspeed_config(stage: int) -> dict[str, Any]:
    """The DeepSpeed config both DeepSpeed loops run: what ``strategy="deepspeed_stage_N"``
    builds (the switchyard loop checks that its engine got exactly this)."""
    return {
        "zero_optimization": {"stage": stage},
        "train_micro_batch_size_per_gpu": 1,
        "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True,
    }


def note(message: str) -> None:
    """A progress line in the job's log, to tell where a failing job stopped."""
    rank = os.environ.get("RANK", "?")
    sys.stderr.write(f"[{time.time():.3f}] rank {rank}: {message}\n")
    sys.stderr.flush()


def resident_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; 0 where it does not tell)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    """This process's peak resident set size (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def allocated_tensor_bytes() -> int:
    """Bytes of the tensor storages reachable from objects the garbage collector tracks, each
    storage once (a ``DTensor`` counts its local shard): what the program allocated, whether its
    pages were touched (resident) or not; tensors held only by C++ are missed."""
    seen: set[int] = set()
    total = 0
    with warnings.catch_warnings():
        # isinstance on some objects (torch.distributed.reduce_op) warns of a deprecation
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        local = getattr(obj, "_local_tensor", obj)  # a DTensor's shard on this rank
        try:
            storage = local.untyped_storage()
            key = storage.data_ptr()
        except (RuntimeError, NotImplementedError, TypeError):
            continue
        if key == 0 or key in seen or local.device.type == "meta":
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


class Loop:
    """One program's training loop; :meth:`run` takes ``steps`` optimizer steps.

    The step is the same for every program (``zero_grad``, forward, cross-entropy, backward,
    optimizer step); only the callables come from plain PyTorch or the library under test."""

    def __init__(
        self,
        label: str,
        model: Callable[[Any], Any],
        batches: Iterator[Any],
        backward: Callable[[Any], None],
        step: Callable[[], Any],
        zero_grad: Callable[[], Any] | None,
        tensors: Callable[[], list[torch.Tensor]],
    ) -> None:
        self.label = label
        self.model = model
        self.batches = batches
        self.backward = backward
        self.step = step
        self.zero_grad = zero_grad
        self.tensors = tensors
        """The loop's trained parameters on this rank (its shard where sharded)."""
        self.loss_fn = nn.CrossEntropyLoss()
        self.loss = float("nan")

    def run(self, steps: int) -> None:
        model, batches, backward, step, zero_grad, loss_fn = (
            self.model,
            self.batches,
            self.backward,
            self.step,
            self.zero_grad,
            self.loss_fn,
        )
        loss: Any = None
        for _ in range(steps):
            x, y = next(batches)
            if zero_grad is not None:
                zero_grad()
            loss = loss_fn(model(x), y)
            backward(loss)
            step()
        if loss is not None:
            self.loss = float(loss.item())

    def digest(self) -> str:
        """A SHA-256 of the parameters' bytes: equal only for bit-identical parameters."""
        digest = hashlib.sha256()
        for tensor in self.tensors():
            local = getattr(tensor, "_local_tensor", tensor)
            digest.update(local.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


def endless(loader: Any, sampler: DistributedSampler[Any] | None = None) -> Iterator[Any]:
    """The loader's batches, epoch after epoch (``sampler.set_epoch`` before each, as a raw
    loop must; the libraries' loaders advance their samplers themselves)."""
    epoch = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def raw_batches(w: Workload, dataset: TensorDataset) -> Iterator[Any]:
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(), shuffle=True, seed=0
    )
    return endless(DataLoader(dataset, batch_size=w.batch, sampler=sampler), sampler)


def shuffled_loader(w: Workload, dataset: TensorDataset) -> DataLoader[Any]:
    """The loader a user hands to a library, which swaps in its distributed sampler."""
    return DataLoader(dataset, batch_size=w.batch, shuffle=True)


def zero_partitions(engine: Any) -> Callable[[], list[torch.Tensor]]:
    """This rank's flat float32 master partitions, which ZeRO's optimizer steps (stage 1 and 2
    keep them in ``single_partition_of_fp32_groups``, stage 3 in
    ``fp32_partitioned_groups_flat``)."""

    def tensors() -> list[torch.Tensor]:
        optimizer = engine.optimizer
        for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
            found = getattr(optimizer, name, None)
            if found:
                return list(found)
        raise SystemExit(f"no flat master partitions found in {type(optimizer).__name__}")

    return tensors


# -- the programs -----------------------------------------------------------------------------


def raw_loop(label: str, strategy: str, w: Workload, dataset: TensorDataset) -> Loop:
    """Plain PyTorch (or plain ``deepspeed.initialize``) on the default process group."""
    inner = make_model(w)
    batches = raw_batches(w, dataset)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(inner)
        optimizer = torch.optim.AdamW(model.parameters(), lr=w.lr)
        return Loop(
            label,
            model,
            batches,
            lambda loss: loss.backward(),
            optimizer.step,
            optimizer.zero_grad,
            lambda: list(inner.parameters()),
        )
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in inner.modules():
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        # as FSDP2 recommends (and switchyard does): the root is not resharded after forward
        fully_shard(inner, mesh=mesh, reshard_after_forward=False)
        optimizer = torch.optim.AdamW(inner.parameters(), lr=w.lr)
        return Loop(
            label,
            inner,
            batches,
            lambda loss: loss.backward(),
            optimizer.step,
            optimizer.zero_grad,
            lambda: list(inner.parameters()),
        )
    import deepspeed

    optimizer = torch.optim.AdamW(inner.parameters(), lr=w.lr)
    engine, _, _, _ = deepspeed.initialize(
        model=inner,
        optimizer=optimizer,
        config=deepspeed_config(int(strategy[-1])),
        dist_init_required=False,
    )
    # engine.step() zeroes the gradients itself
    return Loop(label, engine, batches, engine.backward, engine.step, None, zero_partitions(engine))


def switchyard_loop(label: str, runtime: Any, w: Workload, dataset: TensorDataset) -> Loop:
    """The same training through a launched ``Runtime``, written as its documentation says."""
    inner = make_model(w)
    optimizer = torch.optim.AdamW(inner.parameters(), lr=w.lr)
    model, wrapped = runtime.setup(inner, optimizer)
    loader = runtime.setup_dataloaders(shuffled_loader(w, dataset))
    strategy = runtime.strategy
    config = getattr(strategy, "config", None)
    if isinstance(config, dict) and hasattr(strategy, "zero_stage"):
        expected = deepspeed_config(strategy.zero_stage)
        if config != expected:
            raise SystemExit(
                f"switchyard's DeepSpeed config {config} is not the raw loop's {expected}: the "
                "two loops would not be the same training"
            )
        tensors = zero_partitions(strategy.engine(model))
    else:
        tensors = lambda: list(inner.parameters())  # noqa: E731 - as the other branches' lambdas
    return Loop(
        label, model, endless(loader), runtime.backward, wrapped.step, wrapped.zero_grad, tensors
    )


def fabric_loop(label: str, fabric: Any, w: Workload, dataset: TensorDataset) -> Loop:
    """The same training through a launched Lightning ``Fabric``."""
    inner = make_model(w)
    optimizer = torch.optim.AdamW(inner.parameters(), lr=w.lr)
    model, wrapped = fabric.setup(inner, optimizer)
    loader = fabric.setup_dataloaders(shuffled_loader(w, dataset))
    return Loop(
        label,
        model,
        endless(loader),
        fabric.backward,
        wrapped.step,
        wrapped.zero_grad,
        lambda: list(inner.parameters()),
    )


def accelerate_loop(label: str, accelerator: Any, w: Workload, dataset: TensorDataset) -> Loop:
    """The same training through an ``Accelerator`` (its loader shards the data its own way,
    so its parameters end differently from raw's)."""
    inner = make_model(w)
    optimizer = torch.optim.AdamW(inner.parameters(), lr=w.lr)
    model, wrapped, loader = accelerator.prepare(inner, optimizer, shuffled_loader(w, dataset))
    return Loop(
        label,
        model,
        endless(loader),
        accelerator.backward,
        wrapped.step,
        wrapped.zero_grad,
        lambda: list(inner.parameters()),
    )


def start(program: str, strategy: str) -> tuple[Any, Callable[[], None]]:
    """Create the process group the way ``program`` does; returns the program's handle
    (runtime, Fabric, Accelerator or ``None``) and how to tear it down."""
    if program == "switchyard":
        from switchyard import Runtime

        chosen: Any = "ddp" if strategy == "ddp" else f"deepspeed_stage_{strategy[-1]}"
        if strategy == "fsdp":
            from switchyard_fsdp import FSDPStrategy

            # one all-gather per layer, as the raw loop's fully_shard calls
            chosen = FSDPStrategy(auto_wrap_policy={nn.Linear})
        runtime = Runtime(accelerator="cpu", strategy=chosen, devices=2)
        runtime.launch()
        return runtime, runtime.teardown
    if program == "fabric":
        # in Fabric's own environment, not the one mypy checks
        from lightning.fabric import Fabric  # type: ignore[import-not-found, unused-ignore]

        fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
        fabric.launch()
        return fabric, dist.destroy_process_group
    if program == "accelerate":
        from accelerate import Accelerator  # type: ignore[import-not-found, unused-ignore]

        accelerator = Accelerator(cpu=True)
        return accelerator, dist.destroy_process_group
    if strategy.startswith("zero"):
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    else:
        dist.init_process_group("gloo")
    return None, dist.destroy_process_group


def labels(loops: Sequence[str]) -> list[str]:
    """Unique labels: a second ``raw`` is ``raw-again`` (the A/A loop)."""
    out: list[str] = []
    for name in loops:
        out.append("raw-again" if name == "raw" and "raw" in out else name)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    parser.add_argument("--loops", required=True, help="comma-separated programs")
    parser.add_argument("--workload", required=True, help="a Workload as JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    w = Workload(**json.loads(args.workload))
    loops_asked = args.loops.split(",")
    unknown = sorted(set(loops_asked) - set(PROGRAMS))
    others = {name for name in loops_asked if name != "raw"}
    if unknown or len(others) > 1 or loops_asked.count("raw") > 2:
        raise SystemExit(
            f"--loops {args.loops}: give up to two 'raw' and at most one of "
            f"{', '.join(PROGRAMS[1:])} (unknown: {unknown or 'none'})"
        )
    program = next(iter(others), "raw")
    if program in ("fabric", "accelerate") and args.strategy != "ddp":
        raise SystemExit(f"--loops {args.loops}: {program} is measured only with --strategy ddp")
    handle, teardown = start(program, args.strategy)
    rank, world = dist.get_rank(), dist.get_world_size()
    dataset = make_dataset(w)
    gc.collect()
    rss_before = resident_bytes()
    builders: dict[str, Callable[[str], Loop]] = {
        "raw": lambda label: raw_loop(label, args.strategy, w, dataset),
        "switchyard": lambda label: switchyard_loop(label, handle, w, dataset),
        "fabric": lambda label: fabric_loop(label, handle, w, dataset),
        "accelerate": lambda label: accelerate_loop(label, handle, w, dataset),
    }
    loops = [
        builders[name](label) for name, label in zip(loops_asked, labels(loops_asked), strict=True)
    ]
    note(f"set up {', '.join(loop.label for loop in loops)} ({args.strategy}, {world} processes)")

    for loop in loops:
        loop.run(w.warmup_steps)
    blocks: list[dict[str, Any]] = []
    gc.collect()
    gc.disable()  # collections run between rounds, not inside one loop's block
    dist.barrier()
    span = time.perf_counter()
    for number in range(w.blocks):
        shift = number % len(loops)
        for loop in [*loops[shift:], *loops[:shift]]:
            dist.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            loop.run(w.block_steps)
            dist.barrier()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            blocks.append({"loop": loop.label, "round": number, "wall_s": wall, "cpu_s": cpu})
        gc.collect()
    span = time.perf_counter() - span
    gc.enable()
    note(f"timed span done: {span:.3f} s")
    mine = {
        "rank": rank,
        "span_wall_s": span,
        "blocks": blocks,
        "threads": torch.get_num_threads(),
        "digests": {loop.label: loop.digest() for loop in loops},
        "final_loss": {loop.label: loop.loss for loop in loops},
        "rss_before_models_bytes": rss_before,
        "peak_rss_bytes": peak_resident_bytes(),
        "tensor_bytes": allocated_tensor_bytes(),
    }
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        result = {
            "strategy": args.strategy,
            "loops": [loop.label for loop in loops],
            "world_size": world,
            "global_batch": w.batch * world,
            "block_steps": w.block_steps,
            "ranks": gathered,
        }
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(args.out)
    note("result written" if rank == 0 else "results gathered")
    teardown()
    note("torn down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
