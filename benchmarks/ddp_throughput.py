"""Two-process DDP training throughput through switchyard against the same training in raw PyTorch.

One driver run starts 2-process jobs one after the other, alternating between two programs that
do the same training and differ only in whether switchyard drives it:

raw
    plain PyTorch: ``dist.init_process_group("gloo")``, ``DistributedDataParallel``, a
    ``DataLoader`` with a ``DistributedSampler`` (``set_epoch`` every epoch), ``AdamW``.
switchyard
    the same model, data, loader and optimizer through ``Runtime(accelerator="cpu",
    strategy="ddp", devices=2)``: ``runtime.launch()``, ``runtime.setup(model, optimizer)``,
    ``runtime.setup_dataloaders(loader)``, ``runtime.backward(loss)``.

Both are started the same way, with ``python -m torch.distributed.run --standalone
--nproc-per-node 2`` (torchrun), with ``OMP_NUM_THREADS=1`` in every process, so the only
difference is switchyard. ``--switchyard-run`` adds a third program: the switchyard job started
with ``python -m switchyard run --devices 2``.

Inside each job, after ``--warmup-steps`` steps, the ranks run ``--blocks`` blocks of
``--block-steps`` steps, each block between two barriers. The wall-clock time from the first
barrier to the last gives the job's throughput (global samples per second); the median block
and each rank's CPU time per step (``time.process_time``, all threads of the process) are
recorded too. Rank 0 writes the figures as JSON with a SHA-256 of every rank's final parameters:
every job runs the same steps from the same seed, so all must end bit-identical, raw or
switchyard, or the driver stops (the programs would not be doing the same work). The job order
alternates from round to round (raw first in even rounds).

Jobs in separate processes differ by more than switchyard: each start lands on a machine in
another state. So one more job, the *paired job*, runs both loops side by side in the same two
processes (the raw one on the process group that ``runtime.launch()`` created), alternating
short blocks (``--paired-pairs`` pairs of ``--paired-block-steps`` steps, raw first in even
pairs), as ``step_overhead.py`` does for one process. ``--paired-pairs 0`` skips it.

Reported for both: the median of the paired ratios (switchyard / raw throughput per round, or
per block pair) with a distribution-free confidence interval for that median, which says
whether the run resolves the target (at least 0.98), and the ratios of the medians. On two
shared cores a 2-process step varies by tens of percent from one block to the next even on an
idle machine, so the interval, not the median alone, says what a run shows. This is a
measurement, not a test: nothing here fails on a slow result.

    .venv/bin/python benchmarks/ddp_throughput.py
    .venv/bin/python benchmarks/ddp_throughput.py --rounds 16 --switchyard-run --paired-pairs 800 --json runs/ddp_throughput_long.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

TARGET_RATIO = 0.98
"""The goal: switchyard's 2-process DDP throughput is at least 98% of raw PyTorch DDP's."""

NPROC = 2

SCRIPT = Path(__file__).resolve()


@dataclass(frozen=True)
class Workload:
    """An MLP ``features -> hidden -> hidden -> classes`` trained with AdamW on a synthetic
    classification set of ``samples`` rows, ``batch`` rows per rank and step."""

    features: int = 128
    hidden: int = 256
    classes: int = 10
    batch: int = 64
    samples: int = 8192
    warmup_steps: int = 50
    blocks: int = 12
    """Timed blocks per job (per loop in the paired job), each between two barriers."""
    block_steps: int = 50
    lr: float = 1e-3
    seed: int = 0

    def describe(self) -> str:
        return (
            f"MLP {self.features}-{self.hidden}-{self.hidden}-{self.classes}, batch {self.batch} "
            f"per rank ({self.batch * NPROC} global), {self.samples} samples, AdamW"
        )


# -- the worker: runs in each process of a job --------------------------------------------------


def make_model(w: Workload) -> nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Linear(w.features, w.hidden),
        nn.ReLU(),
        nn.Linear(w.hidden, w.hidden),
        nn.ReLU(),
        nn.Linear(w.hidden, w.classes),
    )


def make_dataset(w: Workload) -> torch.utils.data.TensorDataset:
    import torch
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(w.seed + 1)
    centres = torch.randn(w.classes, w.features, generator=generator) * 2
    labels = torch.randint(0, w.classes, (w.samples,), generator=generator)
    points = centres[labels] + torch.randn(w.samples, w.features, generator=generator)
    return TensorDataset(points, labels)


def parameter_digest(model: nn.Module) -> str:
    """A SHA-256 of the parameters' bytes: equal only for bit-identical parameters."""
    import hashlib

    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def note(rank: int, message: str) -> None:
    """A progress line in the job's log, to tell where a failing job stopped."""
    sys.stderr.write(f"[{time.time():.3f}] rank {rank}: {message}\n")  # one write per line
    sys.stderr.flush()


class Loop:
    """One training loop: ``run(steps)`` does ``steps`` optimizer steps on the next batches.

    The step is the same for both programs; only ``model``, ``optimizer``, ``batches`` and
    ``backward`` come from plain PyTorch or from switchyard."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        optimizer: Any,
        batches: Iterator[Any],
        backward: Callable[[Any], None],
        inner: nn.Module,
    ) -> None:
        from torch import nn

        self.name = name
        self.model = model
        self.optimizer = optimizer
        self.batches = batches
        self.backward = backward
        self.inner = inner
        self.loss_fn = nn.CrossEntropyLoss()
        self.loss = float("nan")

    def run(self, steps: int) -> None:
        model, optimizer, batches, backward, loss_fn = (
            self.model,
            self.optimizer,
            self.batches,
            self.backward,
            self.loss_fn,
        )
        loss: Any = None
        for _ in range(steps):
            x, y = next(batches)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            backward(loss)
            optimizer.step()
        if loss is not None:
            self.loss = loss.item()


def raw_loop(w: Workload, dataset: Any, rank: int, world: int) -> Loop:
    """Plain PyTorch DDP on the default process group, which must exist."""
    import torch
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    torch.manual_seed(w.seed)
    inner = make_model(w)
    model = DistributedDataParallel(inner)
    optimizer = torch.optim.AdamW(model.parameters(), lr=w.lr)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=0
    )
    loader = DataLoader(dataset, batch_size=w.batch, sampler=sampler)

    def batches() -> Iterator[Any]:
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    def backward(loss: Any) -> None:
        loss.backward()

    return Loop("raw", model, optimizer, batches(), backward, inner)


def switchyard_loop(w: Workload, dataset: Any, runtime: Any) -> Loop:
    """The same training through a launched ``Runtime``."""
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(w.seed)
    inner = make_model(w)
    optimizer = torch.optim.AdamW(inner.parameters(), lr=w.lr)
    model, optimizer = runtime.setup(inner, optimizer)
    loader = runtime.setup_dataloaders(DataLoader(dataset, batch_size=w.batch, shuffle=True))

    def batches() -> Iterator[Any]:
        while True:  # the set-up loader advances its sampler's epoch on every new iteration
            yield from loader

    return Loop("switchyard", model, optimizer, batches(), runtime.backward, inner)


def worker(kind: str, w: Workload, out: Path) -> None:
    """Run one job's share of the training in this process and, on rank 0, write its figures.

    ``raw`` and ``switchyard``: ``w.warmup_steps`` steps, then ``w.blocks`` blocks of
    ``w.block_steps`` steps, each block between two barriers. ``paired``: both loops in this
    one job (the raw one on the process group that ``runtime.launch()`` created), their blocks
    alternating, raw first in even pairs."""
    import torch
    import torch.distributed as dist

    dataset = make_dataset(w)
    runtime: Any = None
    if kind == "raw":
        dist.init_process_group("gloo")
    else:
        from switchyard import Runtime

        runtime = Runtime(accelerator="cpu", strategy="ddp", devices=NPROC)
        runtime.launch()
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != NPROC:
        raise SystemExit(f"expected {NPROC} processes, got {world}")
    loops: list[Loop] = []
    if kind in ("raw", "paired"):
        loops.append(raw_loop(w, dataset, rank, world))
    if kind in ("switchyard", "paired"):
        loops.append(switchyard_loop(w, dataset, runtime))
    note(rank, f"set up: {', '.join(loop.name for loop in loops)}")

    for loop in loops:
        loop.run(w.warmup_steps)
    blocks: list[dict[str, Any]] = []
    dist.barrier()
    span_wall, span_cpu = time.perf_counter(), time.process_time()
    for number in range(w.blocks):
        for loop in loops if number % 2 == 0 else loops[::-1]:
            dist.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            loop.run(w.block_steps)
            dist.barrier()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            blocks.append({"loop": loop.name, "pair": number, "wall_s": wall, "cpu_s": cpu})
    span_wall, span_cpu = time.perf_counter() - span_wall, time.process_time() - span_cpu
    note(rank, f"timed span done: {span_wall:.3f} s")

    mine = {
        "rank": rank,
        "span_wall_s": span_wall,
        "span_cpu_s": span_cpu,
        "blocks": blocks,
        "threads": torch.get_num_threads(),
        "digests": {loop.name: parameter_digest(loop.inner) for loop in loops},
    }
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        result = {
            "kind": kind,
            "world_size": world,
            "global_batch": w.batch * world,
            "block_steps": w.block_steps,
            "ranks": gathered,
            "final_loss": {loop.name: loop.loss for loop in loops},
            "model_type": {loop.name: type(loop.model).__name__ for loop in loops},
        }
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(out)
    note(rank, "result written" if rank == 0 else "results gathered")
    if runtime is not None:
        runtime.teardown()
    else:
        dist.destroy_process_group()
    note(rank, "torn down")


# -- the driver -------------------------------------------------------------------------------


PROGRAMS = ("raw", "switchyard", "switchyard-run")


def command(program: str, w: Workload, out: Path) -> list[str]:
    """The command line of one job: ``program`` is one of :data:`PROGRAMS` or ``paired``."""
    kind = "switchyard" if program == "switchyard-run" else program
    worker_args = [
        str(SCRIPT),
        "--worker",
        kind,
        "--out",
        str(out),
        "--workload",
        json.dumps(asdict(w)),
    ]
    if program == "switchyard-run":
        return [sys.executable, "-m", "switchyard", "run", "--devices", str(NPROC), *worker_args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(NPROC),
        *worker_args,
    ]


def run_job(program: str, w: Workload, folder: Path, index: int, timeout: float) -> dict[str, Any]:
    # here, not at the top: this file is also the raw job's worker, which must not import it
    from switchyard.testing.subprocesses import child_environment

    out = folder / f"{index:03d}-{program}.json"
    log = folder / f"{index:03d}-{program}.log"
    with log.open("w") as handle:
        try:
            proc = subprocess.run(
                command(program, w, out),
                stdout=handle,
                stderr=subprocess.STDOUT,
                # no distributed-job or SWITCHYARD_* variables, one torch thread per process
                env=child_environment(
                    {"OMP_NUM_THREADS": "1"}, import_path=False, plugin_switches=False
                ),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{program} job timed out after {timeout:.0f} s; log: {log}") from None
    if proc.returncode == 0 and out.exists():
        return json.loads(out.read_text())  # type: ignore[no-any-return]
    kept = Path(tempfile.mkdtemp(prefix="switchyard-ddp-bench-failed-")) / log.name
    shutil.copyfile(log, kept)
    if out.exists():
        # rank 0 writes the figures after the last timed block and after gathering every rank's
        # times, so they are complete: the job failed on its way out (seen as a SIGABRT at exit,
        # "terminate called without an active exception"). Keep the figures, say so loudly.
        print(
            f"warning: the {program} job exited with code {proc.returncode} after writing its "
            f"figures; they are kept. Log: {kept}",
            file=sys.stderr,
            flush=True,
        )
        job: dict[str, Any] = json.loads(out.read_text())
        job["exit_code"] = proc.returncode
        job["log"] = str(kept)
        return job
    lines = log.read_text(errors="replace").splitlines()
    progress = [line for line in lines if "] rank " in line]
    raise SystemExit(
        f"{program} job failed (exit code {proc.returncode}); whole log: {kept}\n"
        "progress:\n" + "\n".join(progress) + "\nlast lines:\n" + "\n".join(lines[-25:])
    )


@dataclass
class LoopFigures:
    """One loop's figures from one job."""

    span_samples_per_s: float | None
    """Global samples per second over the whole timed span (first to last barrier); ``None``
    in the paired job, whose span holds both loops."""
    block_samples_per_s: list[float]
    """Global samples per second of each block, in order (rank 0's clock)."""
    cpu_ms_per_step: float
    """CPU time per step over the loop's blocks, mean of the ranks."""

    @property
    def block_median(self) -> float:
        return statistics.median(self.block_samples_per_s)

    @property
    def span(self) -> float:
        """:attr:`span_samples_per_s` of a one-loop job."""
        if self.span_samples_per_s is None:
            raise ValueError("the paired job has no per-loop span")
        return self.span_samples_per_s


def loop_figures(job: dict[str, Any], loop: str) -> LoopFigures:
    ranks = job["ranks"]
    per_block = job["global_batch"] * job["block_steps"]
    rank0 = [b for b in ranks[0]["blocks"] if b["loop"] == loop]
    cpu = statistics.fmean(
        sum(b["cpu_s"] for b in r["blocks"] if b["loop"] == loop)
        / (len(rank0) * job["block_steps"])
        for r in ranks
    )
    one_loop = len({b["loop"] for b in ranks[0]["blocks"]}) == 1
    return LoopFigures(
        span_samples_per_s=len(rank0) * per_block / ranks[0]["span_wall_s"] if one_loop else None,
        block_samples_per_s=[per_block / b["wall_s"] for b in rank0],
        cpu_ms_per_step=cpu * 1e3,
    )


def _load() -> str:
    """The 1-, 5- and 15-minute load averages: other programs competing for the cores."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _load1() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def spread(values: Sequence[float], fmt: str = ",.0f") -> str:
    """``median [q1-q3]``."""
    q1, q2, q3 = quartiles(values)
    return f"{q2:{fmt}} [{q1:{fmt}}-{q3:{fmt}}]"


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line.rstrip() for line in lines)


def median_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median: ``(low, high, coverage)``.

    The interval runs from the k-th smallest to the k-th largest value, k as large as keeps the
    coverage (from the binomial distribution) at least ``confidence``; with too few values for
    that, it is the whole range and ``coverage`` says how much it holds."""
    xs = sorted(values)
    n = len(xs)

    def coverage(k: int) -> float:  # P(x_(k) <= median <= x_(n+1-k))
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)


def verdict(values: Sequence[float]) -> tuple[str, dict[str, float]]:
    """The median of paired throughput ratios against the target, with its interval."""
    median = statistics.median(values)
    low, high, cover = median_interval(values)
    if low >= TARGET_RATIO:
        words = "met, the whole interval above it"
    elif median >= TARGET_RATIO:
        words = "met by the median, but the interval reaches below it: not resolved at this noise"
    elif high >= TARGET_RATIO:
        words = "NOT met by the median, but the interval reaches above it: not resolved"
    else:
        words = "NOT met, the whole interval below it"
    text = (
        f"{median:.4f}, {cover * 100:.1f}% interval {low:.4f}-{high:.4f}; "
        f"target >= {TARGET_RATIO}: {words}"
    )
    return text, {"median": median, "interval_low": low, "interval_high": high, "coverage": cover}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="2-process DDP throughput through switchyard vs raw PyTorch DDP."
    )
    parser.add_argument("--rounds", type=int, default=6, help="measured rounds (default 6)")
    parser.add_argument(
        "--warmup-rounds", type=int, default=0, help="rounds run first and discarded (default 0)"
    )
    parser.add_argument(
        "--blocks",
        type=int,
        default=Workload.blocks,
        help="timed blocks per job, each between two barriers (default %(default)s)",
    )
    parser.add_argument(
        "--block-steps",
        type=int,
        default=Workload.block_steps,
        help="steps per block (default %(default)s)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=Workload.warmup_steps,
        help="untimed steps before the blocks (default %(default)s)",
    )
    parser.add_argument(
        "--paired-pairs",
        type=int,
        default=200,
        help="block pairs of the paired job, which runs both loops in one job, their blocks "
        "alternating (0 skips it; default %(default)s)",
    )
    parser.add_argument(
        "--paired-block-steps",
        type=int,
        default=10,
        help="steps per block in the paired job (default %(default)s)",
    )
    parser.add_argument("--hidden", type=int, default=Workload.hidden, help="MLP width")
    parser.add_argument("--batch", type=int, default=Workload.batch, help="rows per rank and step")
    parser.add_argument(
        "--switchyard-run",
        action="store_true",
        help="also run the switchyard job through 'python -m switchyard run --devices 2'",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per job")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    # worker mode: how the jobs run this file
    parser.add_argument("--worker", choices=("raw", "switchyard", "paired"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        worker(args.worker, Workload(**json.loads(args.workload)), args.out)
        return 0

    if args.rounds < 1 or args.blocks < 1:
        parser.error("--rounds and --blocks must be at least 1")
    w = Workload(
        hidden=args.hidden,
        batch=args.batch,
        warmup_steps=args.warmup_steps,
        blocks=args.blocks,
        block_steps=args.block_steps,
    )
    programs = list(PROGRAMS if args.switchyard_run else PROGRAMS[:2])
    load_at_start = _load()
    print(
        f"Python {platform.python_version()}, {platform.platform()}, {_cpu_model()} "
        f"({os.cpu_count()} cores), load average {load_at_start}"
    )
    print(
        f"{w.describe()}; {NPROC} processes, OMP_NUM_THREADS=1\n"
        f"per job: {w.warmup_steps} warm-up steps, then {w.blocks} blocks of {w.block_steps} "
        "steps, each between two barriers"
    )
    for program in programs:
        shown = " ".join(command(program, w, Path("OUT"))[1:7])
        print(f"  {program}: python {shown} ...")
    print(
        f"{args.rounds} rounds after {args.warmup_rounds} warm-up rounds, the job order "
        "alternating\n"
    )

    rounds: list[dict[str, Any]] = []
    # final-parameter digests by job kind: every loop of a kind runs the same steps
    digests: dict[str, set[str]] = {"separate jobs": set(), "paired job": set()}
    started = time.perf_counter()
    print(
        "  ".join(("round", "load", *(f"{p} samples/s" for p in programs), "switchyard/raw")),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="switchyard-ddp-bench-") as tmp:
        folder = Path(tmp)
        index = 0
        for number in range(args.warmup_rounds + args.rounds):
            order = programs if number % 2 == 0 else programs[::-1]
            record: dict[str, Any] = {
                "round": number - args.warmup_rounds,
                "order": order,
                "load_1min": _load1(),
                "jobs": {},
            }
            for program in order:
                job = run_job(program, w, folder, index, args.timeout)
                index += 1
                job["load_1min_after"] = _load1()
                record["jobs"][program] = job
                digests["separate jobs"].update(
                    d for r in job["ranks"] for d in r["digests"].values()
                )
            figures = {
                p: loop_figures(record["jobs"][p], "raw" if p == "raw" else "switchyard")
                for p in programs
            }
            record["figures"] = {p: asdict(f) for p, f in figures.items()}
            ratio = figures["switchyard"].span / figures["raw"].span
            measured = number >= args.warmup_rounds
            cells = [f"{figures[p].span:,.0f}" for p in programs]
            print(
                "  ".join(
                    (
                        str(record["round"]) if measured else "warm-up",
                        f"{record['load_1min']:.2f}",
                        *cells,
                        f"{ratio:.4f}",
                    )
                ),
                flush=True,
            )
            if measured:
                rounds.append(record)

        paired: dict[str, Any] | None = None
        if args.paired_pairs > 0:
            pw = replace(w, blocks=args.paired_pairs, block_steps=args.paired_block_steps)
            load_paired = _load1()
            paired = run_job("paired", pw, folder, index, args.timeout)
            paired["load_1min"] = load_paired
            paired["load_1min_after"] = _load1()
            digests["paired job"].update(d for r in paired["ranks"] for d in r["digests"].values())
    elapsed = time.perf_counter() - started

    for jobs, found in digests.items():
        if len(found) > 1:
            raise SystemExit(
                f"{jobs}: the loops ended with different parameters ({sorted(found)}); they did "
                "not do the same work, so their times cannot be compared"
            )

    summary: dict[str, Any] = {"target_ratio": TARGET_RATIO}
    per_program = {p: [LoopFigures(**r["figures"][p]) for r in rounds] for p in programs}
    rows: list[tuple[str, ...]] = [
        (
            "program",
            "span samples/s: median [IQR]",
            "min-max",
            "block median samples/s: median [IQR]",
            "CPU ms/step per rank",
        )
    ]
    for p in programs:
        spans = [f.span for f in per_program[p]]
        rows.append(
            (
                p,
                spread(spans),
                f"{min(spans):,.0f}-{max(spans):,.0f}",
                spread([f.block_median for f in per_program[p]]),
                spread([f.cpu_ms_per_step for f in per_program[p]], ".3f"),
            )
        )
    print(
        f"\nseparate jobs, over {args.rounds} rounds (global samples/s; span: first to last "
        "barrier; block median: the job's median block):"
    )
    print(format_table(rows))

    def medians(p: str, attr: str) -> float:
        return statistics.median(float(getattr(f, attr)) for f in per_program[p])

    per_round = [
        r["figures"]["switchyard"]["span_samples_per_s"] / r["figures"]["raw"]["span_samples_per_s"]
        for r in rounds
    ]
    span_ratio = medians("switchyard", "span_samples_per_s") / medians("raw", "span_samples_per_s")
    block_ratio = medians("switchyard", "block_median") / medians("raw", "block_median")
    cpu_ratio = medians("raw", "cpu_ms_per_step") / medians("switchyard", "cpu_ms_per_step")
    text, stats = verdict(per_round)
    summary["separate_jobs"] = {
        "per_round_ratio": stats,
        "span_ratio_of_medians": span_ratio,
        "block_median_ratio_of_medians": block_ratio,
        "cpu_per_step_raw_over_switchyard": cpu_ratio,
    }
    print(f"\nswitchyard/raw throughput, separate jobs, median of the per-round ratios: {text}")
    print(
        f"  ratio of the medians: span {span_ratio:.4f}, block median {block_ratio:.4f}; "
        f"CPU time per step raw/switchyard {cpu_ratio:.4f}"
    )
    if "switchyard-run" in programs:
        run_ratio = medians("switchyard-run", "span_samples_per_s") / medians(
            "raw", "span_samples_per_s"
        )
        summary["separate_jobs"]["switchyard_run_span_ratio_of_medians"] = run_ratio
        print(
            f"  switchyard started by 'switchyard run' / raw, ratio of the medians: {run_ratio:.4f}"
        )

    if paired is not None:
        raw_f, sy_f = loop_figures(paired, "raw"), loop_figures(paired, "switchyard")
        pair_ratios = [
            s / r for s, r in zip(sy_f.block_samples_per_s, raw_f.block_samples_per_s, strict=True)
        ]
        text, stats = verdict(pair_ratios)
        paired_ratio = sy_f.block_median / raw_f.block_median
        summary["paired_job"] = {
            "per_pair_ratio": stats,
            "per_pair_ratio_quartiles": quartiles(pair_ratios),
            "ratio_of_block_medians": paired_ratio,
            "cpu_per_step_raw_over_switchyard": raw_f.cpu_ms_per_step / sy_f.cpu_ms_per_step,
            "raw": asdict(raw_f),
            "switchyard": asdict(sy_f),
        }
        print(
            f"\npaired job: both loops in one 2-process job (torchrun), {args.paired_pairs} "
            f"pairs of {args.paired_block_steps}-step blocks alternating, load "
            f"{paired['load_1min']:.2f}:"
        )
        print(
            format_table(
                [
                    ("loop", "block samples/s: median [IQR]", "CPU ms/step per rank"),
                    ("raw", spread(raw_f.block_samples_per_s), f"{raw_f.cpu_ms_per_step:.3f}"),
                    (
                        "switchyard",
                        spread(sy_f.block_samples_per_s),
                        f"{sy_f.cpu_ms_per_step:.3f}",
                    ),
                ]
            )
        )
        print(f"switchyard/raw throughput, paired job, median of the per-pair ratios: {text}")
        q1, _, q3 = quartiles(pair_ratios)
        print(
            f"  per-pair ratios IQR {q1:.4f}-{q3:.4f}; ratio of the block medians "
            f"{paired_ratio:.4f}; CPU time per step raw/switchyard "
            f"{raw_f.cpu_ms_per_step / sy_f.cpu_ms_per_step:.4f}"
        )
    failed_at_exit = [
        j
        for j in [*(j for r in rounds for j in r["jobs"].values()), *([paired] if paired else [])]
        if j.get("exit_code")
    ]
    summary["jobs_failed_after_writing_figures"] = len(failed_at_exit)
    if failed_at_exit:
        print(
            f"\n{len(failed_at_exit)} job(s) exited with an error after writing complete figures "
            f"(exit codes {sorted({j['exit_code'] for j in failed_at_exit})}); logs: "
            + ", ".join(j["log"] for j in failed_at_exit)
        )
    print(
        "\nwithin the separate jobs, and within the paired job, every loop on every rank ended "
        "with bit-identical parameters (SHA-256 of the parameter bytes)"
    )
    load_at_end = _load()
    print(f"load average at the end: {load_at_end}; driver wall time {elapsed:.0f} s")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "processor": _cpu_model(),
                    "cpu_count": os.cpu_count(),
                    "load_average_at_start": load_at_start,
                    "load_average_at_end": load_at_end,
                    "workload": asdict(w),
                    "programs": programs,
                    "summary": summary,
                    "rounds": rounds,
                    "paired_job": paired,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
