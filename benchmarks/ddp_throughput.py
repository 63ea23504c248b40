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
--nproc-per-node 2`` (torchrun), and with ``OMP_NUM_THREADS=1`` in every process, so the only
difference is switchyard. ``--switchyard-run`` adds a third program: the switchyard job started
with ``python -m switchyard run --devices 2`` instead.

Inside each job, after ``--warmup-steps`` steps, the ranks meet at a barrier, run ``--steps``
steps and meet at a barrier again; the wall-clock time between the two barriers gives the
throughput (global samples per second), and each rank's CPU time over the same span
(``time.process_time``, all threads of the process) is recorded too, as it is less disturbed by
other programs on the machine. Rank 0 writes the figures as JSON, with a digest of the final
parameters: every job runs the same steps from the same seed, so every job must end with
bit-identical parameters, raw or switchyard, or the driver stops (the two programs would not be
doing the same work).

The job order alternates from round to round (raw first in even rounds, switchyard first in odd
ones). Reported: each round's figures with the load average when it started, the median and
spread of each program's throughput over the rounds, the ratio of the medians
(switchyard / raw; target at least 0.98) and the median of the per-round ratios. This is a
measurement, not a test: nothing here fails on a slow result.

    .venv/bin/python benchmarks/ddp_throughput.py
    .venv/bin/python benchmarks/ddp_throughput.py --rounds 10 --switchyard-run --json runs/ddp.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
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
    steps: int = 800
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
    print(f"[{time.time():.3f}] rank {rank}: {message}", file=sys.stderr, flush=True)


def worker(kind: str, w: Workload, out: Path) -> None:
    """Train for ``w.warmup_steps + w.steps`` steps; time the last ``w.steps`` between two
    barriers. ``kind`` is ``raw`` or ``switchyard``; the loop is the same for both."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader

    dataset = make_dataset(w)
    loss_fn = nn.CrossEntropyLoss()

    if kind == "raw":
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data.distributed import DistributedSampler

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(w.seed)
        inner = make_model(w)
        model: nn.Module = DistributedDataParallel(inner)
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

        def raw_backward(loss: Any) -> None:
            loss.backward()

        def raw_barrier() -> None:
            dist.barrier()

        backward: Callable[[Any], None] = raw_backward
        barrier: Callable[[], None] = raw_barrier
        runtime = None
    elif kind == "switchyard":
        from switchyard import Runtime

        runtime = Runtime(accelerator="cpu", strategy="ddp", devices=NPROC)
        runtime.launch()
        rank, world = runtime.global_rank, runtime.world_size
        torch.manual_seed(w.seed)
        inner = make_model(w)
        optimizer = torch.optim.AdamW(inner.parameters(), lr=w.lr)
        model, optimizer = runtime.setup(inner, optimizer)
        loader = runtime.setup_dataloaders(DataLoader(dataset, batch_size=w.batch, shuffle=True))

        def batches() -> Iterator[Any]:
            while True:  # the set-up loader advances the sampler's epoch itself
                yield from loader

        backward = runtime.backward
        barrier = runtime.barrier
    else:
        raise ValueError(f"unknown worker kind {kind!r}")

    if world != NPROC:
        raise SystemExit(f"expected {NPROC} processes, got {world}")
    data = batches()
    note(rank, "set up")

    def run(steps: int) -> torch.Tensor:
        loss = torch.zeros(())
        for _ in range(steps):
            x, y = next(data)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            backward(loss)
            optimizer.step()
        return loss

    run(w.warmup_steps)
    barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    loss = run(w.steps)
    barrier()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    note(rank, f"timed span done: {wall:.3f} s")

    mine = {"rank": rank, "wall_s": wall, "cpu_s": cpu, "threads": torch.get_num_threads()}
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        result = {
            "kind": kind,
            "world_size": world,
            "steps": w.steps,
            "wall_s": wall,
            "samples_per_s": w.steps * w.batch * world / wall,
            "ranks": gathered,
            "final_loss": loss.item(),
            "digest": parameter_digest(inner),
            "model_type": type(model).__name__,
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
    worker_args = [
        str(SCRIPT),
        "--worker",
        "raw" if program == "raw" else "switchyard",
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


def child_environment() -> dict[str, str]:
    """This environment without anything that would make a job think it is already part of a
    distributed run, and with one torch thread per process."""
    drop = ("SWITCHYARD_", "TORCHELASTIC_", "SLURM_", "OMPI_", "PMI_", "PMIX_", "LSB_")
    names = {
        "MASTER_ADDR",
        "MASTER_PORT",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "NODE_RANK",
        "GROUP_RANK",
        "LOCAL_WORLD_SIZE",
    }
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(drop)}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_job(program: str, w: Workload, folder: Path, index: int, timeout: float) -> dict[str, Any]:
    out = folder / f"{index:03d}-{program}.json"
    log = folder / f"{index:03d}-{program}.log"
    with log.open("w") as handle:
        try:
            proc = subprocess.run(
                command(program, w, out),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=child_environment(),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{program} job timed out after {timeout:.0f} s; log: {log}") from None
    if proc.returncode != 0 or not out.exists():
        kept = Path(tempfile.mkdtemp(prefix="switchyard-ddp-bench-failed-")) / log.name
        shutil.copyfile(log, kept)
        lines = log.read_text(errors="replace").splitlines()
        progress = [line for line in lines if "] rank " in line]
        raise SystemExit(
            f"{program} job failed (exit code {proc.returncode}); whole log: {kept}\n"
            "progress:\n" + "\n".join(progress) + "\nlast lines:\n" + "\n".join(lines[-25:])
        )
    return json.loads(out.read_text())  # type: ignore[no-any-return]


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


@dataclass
class Summary:
    """One program's figures over the rounds."""

    program: str
    samples_per_s: list[float]
    cpu_ms_per_step: list[float]
    """Mean over the ranks of CPU time per step in the timed span."""

    def line(self) -> tuple[str, ...]:
        q1, q2, q3 = quartiles(self.samples_per_s)
        c1, c2, c3 = quartiles(self.cpu_ms_per_step)
        return (
            self.program,
            f"{q2:,.0f}",
            f"[{q1:,.0f}-{q3:,.0f}]",
            f"{min(self.samples_per_s):,.0f}-{max(self.samples_per_s):,.0f}",
            f"{c2:.3f} [{c1:.3f}-{c3:.3f}]",
        )


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="2-process DDP throughput through switchyard vs raw PyTorch DDP."
    )
    parser.add_argument("--rounds", type=int, default=6, help="measured rounds (default 6)")
    parser.add_argument(
        "--warmup-rounds", type=int, default=0, help="rounds run first and discarded"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=Workload.steps,
        help="timed steps per job (default %(default)s)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=Workload.warmup_steps,
        help="untimed steps before them (default %(default)s)",
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
    parser.add_argument("--worker", choices=("raw", "switchyard"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        worker(args.worker, Workload(**json.loads(args.workload)), args.out)
        return 0

    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    w = Workload(
        hidden=args.hidden, batch=args.batch, steps=args.steps, warmup_steps=args.warmup_steps
    )
    programs = list(PROGRAMS if args.switchyard_run else PROGRAMS[:2])
    load_at_start = _load()
    print(
        f"Python {platform.python_version()}, {platform.platform()}, {_cpu_model()} "
        f"({os.cpu_count()} cores), load average {load_at_start}"
    )
    print(
        f"{w.describe()}; {w.warmup_steps} warm-up + {w.steps} timed steps per job; "
        f"{NPROC} processes, OMP_NUM_THREADS=1"
    )
    print(f"jobs: {', '.join(programs)}; {args.rounds} rounds after {args.warmup_rounds} warm-up")
    for program in programs:
        print(f"  {program}: {' '.join(command(program, w, Path('OUT'))[1:6])} ...")
    print()

    rounds: list[dict[str, Any]] = []
    digests: dict[str, set[str]] = {p: set() for p in programs}
    started = time.perf_counter()
    header = ("round", "load", *(f"{p} samples/s" for p in programs), "switchyard/raw")
    print("  ".join(header))
    with tempfile.TemporaryDirectory(prefix="switchyard-ddp-bench-") as tmp:
        folder = Path(tmp)
        index = 0
        for number in range(args.warmup_rounds + args.rounds):
            order = programs if number % 2 == 0 else programs[::-1]
            measured = number >= args.warmup_rounds
            record: dict[str, Any] = {
                "round": number - args.warmup_rounds,
                "order": order,
                "load_1min": _load1(),
                "jobs": {},
            }
            for program in order:
                result = run_job(program, w, folder, index, args.timeout)
                index += 1
                result["load_1min_after"] = _load1()
                record["jobs"][program] = result
                digests[program].add(result["digest"])
            ratio = (
                record["jobs"]["switchyard"]["samples_per_s"]
                / record["jobs"]["raw"]["samples_per_s"]
            )
            record["ratio"] = ratio
            label = str(record["round"]) if measured else "warm-up"
            cells = [f"{record['jobs'][p]['samples_per_s']:,.0f}" for p in programs]
            print(
                "  ".join((label, f"{record['load_1min']:.2f}", *cells, f"{ratio:.4f}")),
                flush=True,
            )
            if measured:
                rounds.append(record)
    elapsed = time.perf_counter() - started

    all_digests = set().union(*digests.values())
    if len(all_digests) != 1:
        raise SystemExit(
            f"the jobs ended with different parameters ({digests}); they did not do the same "
            "work, so their times cannot be compared"
        )

    summaries = []
    for program in programs:
        jobs = [r["jobs"][program] for r in rounds]
        summaries.append(
            Summary(
                program,
                [j["samples_per_s"] for j in jobs],
                [
                    statistics.fmean(rank["cpu_s"] for rank in j["ranks"]) / j["steps"] * 1e3
                    for j in jobs
                ],
            )
        )
    print(f"\nover {args.rounds} rounds (global samples/s, wall clock between the barriers):")
    print(
        format_table(
            [
                ("program", "median", "[IQR]", "min-max", "CPU ms/step per rank, median [IQR]"),
                *(s.line() for s in summaries),
            ]
        )
    )
    by_name = {s.program: s for s in summaries}
    raw, sy = by_name["raw"], by_name["switchyard"]
    ratio_of_medians = statistics.median(sy.samples_per_s) / statistics.median(raw.samples_per_s)
    per_round = [r["ratio"] for r in rounds]
    r1, r2, r3 = quartiles(per_round)
    cpu_ratio = statistics.median(sy.cpu_ms_per_step) / statistics.median(raw.cpu_ms_per_step)
    verdict = "met" if ratio_of_medians >= TARGET_RATIO else "NOT met"
    print(
        f"\nswitchyard/raw throughput: {ratio_of_medians:.4f} (ratio of medians; target >= "
        f"{TARGET_RATIO}: {verdict})"
    )
    print(
        f"  per-round ratios: median {r2:.4f} [IQR {r1:.4f}-{r3:.4f}], "
        f"min-max {min(per_round):.4f}-{max(per_round):.4f}"
    )
    print(f"  CPU time per step, switchyard/raw (median): {cpu_ratio:.4f}")
    if "switchyard-run" in by_name:
        run_ratio = statistics.median(by_name["switchyard-run"].samples_per_s) / statistics.median(
            raw.samples_per_s
        )
        print(f"  switchyard started by 'switchyard run', /raw (ratio of medians): {run_ratio:.4f}")
    print(f"all jobs ended with identical parameters (sha256 {next(iter(all_digests))[:16]}...)")
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
                    "target_ratio": TARGET_RATIO,
                    "ratio_of_medians": ratio_of_medians,
                    "per_round_ratio_quartiles": [r1, r2, r3],
                    "cpu_ratio_of_medians": cpu_ratio,
                    "summaries": [asdict(s) for s in summaries],
                    "rounds": rounds,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
