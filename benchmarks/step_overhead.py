"""Per-step cost of switchyard's Runtime against the same training step in plain PyTorch.

One step is forward, cross-entropy loss, backward, ``AdamW.step()`` and ``zero_grad()`` on a small
MLP. The raw loop and the switchyard loop (``Runtime(accelerator="cpu",
strategy="single_device", devices=1)``) train the very same model and optimizer objects on the
same pre-made batches, so parameters, optimizer state and memory layout are identical; only the
call path differs. Blocks of steps alternate between the two loops (raw first on even pairs,
switchyard first on odd pairs) after a warm-up, with the garbage collector paused inside blocks
and ``torch.set_num_threads`` fixed.

For ``bf16-mixed`` the raw loop is the hand-written equivalent of what the precision does:
the forward under ``torch.autocast("cpu", dtype=torch.bfloat16)``, the output cast back to
float32, the loss outside autocast.

Reported per configuration, in wall-clock time and in the CPU time of the process: the median of
the per-block mean step times for each loop, their ratio, and the interquartile range of the
per-pair ratios. A second table gives the fixed cost that each wrapped call (forward, backward,
``optimizer.step``, ``zero_grad``) adds, measured on a model so small that the call path
dominates. This is a measurement, not a test: nothing here fails on a slow result.

    .venv/bin/python benchmarks/step_overhead.py
    .venv/bin/python benchmarks/step_overhead.py --pairs 400 --json runs/step_overhead.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from switchyard import Runtime

TARGET_OVERHEAD = 0.02
"""The goal at ``32-true``: a switchyard step costs at most 2% more than the raw step."""

TARGET_PRECISIONS = ("32-true",)

Batch = tuple[torch.Tensor, torch.Tensor]
Step = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class Size:
    """An MLP ``features -> hidden -> hidden -> classes`` trained on batches of ``batch`` rows."""

    name: str
    batch: int
    features: int
    hidden: int
    classes: int

    def describe(self) -> str:
        return f"MLP {self.features}-{self.hidden}-{self.hidden}-{self.classes}, batch {self.batch}"


SIZES = {
    # the example's model (examples/train.py): about 0.6 ms per raw step on one EPYC core
    "small": Size("small", batch=64, features=32, hidden=128, classes=8),
    # about 10 ms per raw step on one EPYC core
    "medium": Size("medium", batch=256, features=256, hidden=512, classes=10),
}

PRECISIONS = ("32-true", "bf16-mixed")


def make_model(size: Size) -> nn.Module:
    return nn.Sequential(
        nn.Linear(size.features, size.hidden),
        nn.ReLU(),
        nn.Linear(size.hidden, size.hidden),
        nn.ReLU(),
        nn.Linear(size.hidden, size.classes),
    )


def make_batches(size: Size, count: int, seed: int) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size.batch, size.features, generator=generator),
            torch.randint(0, size.classes, (size.batch,), generator=generator),
        )
        for _ in range(count)
    ]


def raw_step(
    precision: str, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module
) -> Step:
    """The plain PyTorch step that ``precision`` corresponds to."""
    if precision == "32-true":

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    elif precision == "bf16-mixed":

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            loss = loss_fn(out.float(), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    else:
        raise ValueError(f"no raw loop for precision {precision!r}; use one of {PRECISIONS}")
    return step


def switchyard_step(
    runtime: Runtime, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module
) -> Step:
    """The same step written for switchyard: model and optimizer are the set-up wrappers."""

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(x), y)
        runtime.backward(loss)
        optimizer.step()
        optimizer.zero_grad()

    return step


def make_runtime(precision: str) -> Runtime:
    runtime = Runtime(accelerator="cpu", strategy="single_device", devices=1, precision=precision)
    runtime.launch()
    return runtime


def check_same_result(size: Size, precision: str, batches: Sequence[Batch], seed: int) -> None:
    """Both loops, started from the same weights, must produce bit-identical parameters;
    otherwise they do different work and the timing comparison means nothing."""
    results = []
    for use_switchyard in (False, True):
        torch.manual_seed(seed)
        model = make_model(size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        runtime = make_runtime(precision) if use_switchyard else None
        if runtime is not None:
            wrapped, wrapped_opt = runtime.setup(model, optimizer)
            step = switchyard_step(runtime, wrapped, wrapped_opt, loss_fn)
        else:
            step = raw_step(precision, model, optimizer, loss_fn)
        for x, y in batches[:3]:
            step(x, y)
        results.append([p.detach().clone() for p in model.parameters()])
        if runtime is not None:
            runtime.teardown()
    if not all(torch.equal(a, b) for a, b in zip(*results, strict=True)):
        raise SystemExit(
            f"{size.name} {precision}: the raw and switchyard loops gave different parameters; "
            "fix the raw loop before comparing times"
        )


def run_block(step: Step, batches: Sequence[Batch], steps: int) -> tuple[float, float]:
    """Mean seconds per step over ``steps`` consecutive steps: wall-clock time, and CPU time of
    this process (which leaves out the time other programs on the machine held the cores)."""
    count = len(batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        x, y = batches[i % count]
        step(x, y)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


CLOCKS = {
    "wall": "wall-clock time (time.perf_counter)",
    "cpu": "CPU time of this process (time.process_time)",
}


@dataclass
class Comparison:
    """Raw against switchyard for one clock; times in milliseconds per step."""

    raw_ms: float
    raw_iqr_ms: tuple[float, float]
    switchyard_ms: float
    switchyard_iqr_ms: tuple[float, float]
    ratio: float
    """switchyard median / raw median; the overhead is ``ratio - 1``."""
    paired_ratio_median: float
    paired_ratio_iqr: tuple[float, float]
    """Quartiles of switchyard block / raw block, over the pairs run back to back."""
    overhead_us: float
    meets_target: bool | None
    raw_block_ms: list[float]
    switchyard_block_ms: list[float]


@dataclass
class Result:
    size: str
    model: str
    precision: str
    threads: int
    steps_per_block: int
    pairs: int
    target: float | None
    clocks: dict[str, Comparison]


def compare(raw: Sequence[float], sy: Sequence[float], target: float | None) -> Comparison:
    raw_q = quartiles(raw)
    sy_q = quartiles(sy)
    paired_q = quartiles([s / r for s, r in zip(sy, raw, strict=True)])
    ratio = sy_q[1] / raw_q[1]
    return Comparison(
        raw_ms=raw_q[1] * 1e3,
        raw_iqr_ms=(raw_q[0] * 1e3, raw_q[2] * 1e3),
        switchyard_ms=sy_q[1] * 1e3,
        switchyard_iqr_ms=(sy_q[0] * 1e3, sy_q[2] * 1e3),
        ratio=ratio,
        paired_ratio_median=paired_q[1],
        paired_ratio_iqr=(paired_q[0], paired_q[2]),
        overhead_us=(sy_q[1] - raw_q[1]) * 1e6,
        meets_target=None if target is None else ratio - 1 <= target,
        raw_block_ms=[t * 1e3 for t in raw],
        switchyard_block_ms=[t * 1e3 for t in sy],
    )


def measure(
    size: Size,
    precision: str,
    *,
    pairs: int,
    warmup_pairs: int,
    block_seconds: float,
    threads: int,
    seed: int,
) -> Result:
    batches = make_batches(size, count=8, seed=seed)
    check_same_result(size, precision, batches, seed)

    torch.manual_seed(seed)
    model = make_model(size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    runtime = make_runtime(precision)
    # the wrappers drive the same model and optimizer objects as the raw loop
    wrapped, wrapped_opt = runtime.setup(model, optimizer)
    loops = {
        "raw": raw_step(precision, model, optimizer, loss_fn),
        "switchyard": switchyard_step(runtime, wrapped, wrapped_opt, loss_fn),
    }

    # first steps (allocator, autocast caches), then size the blocks from the raw step time
    for step in loops.values():
        run_block(step, batches, 20)
    per_step = min(run_block(loops["raw"], batches, 20)[1] for _ in range(3))
    steps = max(1, round(block_seconds / per_step))

    times: dict[tuple[str, str], list[float]] = {
        (loop, clock): [] for loop in loops for clock in CLOCKS
    }
    gc.collect()
    gc.disable()
    try:
        for pair in range(warmup_pairs + pairs):
            order = ("raw", "switchyard") if pair % 2 == 0 else ("switchyard", "raw")
            for loop in order:
                wall, cpu = run_block(loops[loop], batches, steps)
                if pair >= warmup_pairs:
                    times[loop, "wall"].append(wall)
                    times[loop, "cpu"].append(cpu)
            gc.collect()  # outside the timed blocks
    finally:
        gc.enable()
        runtime.teardown()

    target = TARGET_OVERHEAD if precision in TARGET_PRECISIONS else None
    return Result(
        size=size.name,
        model=size.describe(),
        precision=precision,
        threads=threads,
        steps_per_block=steps,
        pairs=pairs,
        target=target,
        clocks={
            clock: compare(times["raw", clock], times["switchyard", clock], target)
            for clock in CLOCKS
        },
    )


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


def table(results: Sequence[Result], clock: str) -> str:
    header = (
        "size",
        "precision",
        "raw ms/step [IQR]",
        "switchyard ms/step [IQR]",
        "overhead",
        "per-pair median [IQR]",
        "target",
    )
    rows = [header]
    for result in results:
        r = result.clocks[clock]
        if result.target is None:
            verdict = "-"
        else:
            verdict = f"<= {result.target * 100:.0f}%: {'met' if r.meets_target else 'NOT met'}"
        rows.append(
            (
                result.size,
                result.precision,
                f"{r.raw_ms:.3f} [{r.raw_iqr_ms[0]:.3f}-{r.raw_iqr_ms[1]:.3f}]",
                f"{r.switchyard_ms:.3f} [{r.switchyard_iqr_ms[0]:.3f}-"
                f"{r.switchyard_iqr_ms[1]:.3f}]",
                f"{_pct(r.ratio)} ({r.overhead_us:+.1f} us)",
                f"{_pct(r.paired_ratio_median)} [{_pct(r.paired_ratio_iqr[0])} .. "
                f"{_pct(r.paired_ratio_iqr[1])}]",
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


@dataclass
class CallCost:
    """Best per-call time of one call of the step, raw and through switchyard, in microseconds."""

    precision: str
    call: str
    raw_us: float
    switchyard_us: float

    @property
    def added_us(self) -> float:
        return self.switchyard_us - self.raw_us


def call_costs(precision: str, repeats: int, number: int) -> list[CallCost]:
    """What each wrapped call adds, on a model so small that the call path dominates.

    The best of ``repeats`` timings of ``number`` calls is kept: other programs on the machine
    can only add time, so the minimum is the least disturbed estimate of a fixed cost.
    """
    model = nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    runtime = make_runtime(precision)
    wrapped, wrapped_opt = runtime.setup(model, optimizer)
    x = torch.randn(8, 4)
    leaf = torch.ones(1, requires_grad=True)

    if precision == "bf16-mixed":

        def raw_forward() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            out.float()

    else:

        def raw_forward() -> None:
            model(x)

    def raw_backward() -> None:
        loss: Any = leaf * 2
        loss.backward()

    def switchyard_backward() -> None:
        runtime.backward(leaf * 2)

    calls: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "forward": (raw_forward, lambda: wrapped(x)),
        "backward": (raw_backward, switchyard_backward),
        "optimizer.step": (optimizer.step, wrapped_opt.step),
        "zero_grad": (optimizer.zero_grad, wrapped_opt.zero_grad),
    }
    costs = []
    gc.collect()
    gc.disable()
    try:
        for name, (raw, sy) in calls.items():
            best = {"raw": float("inf"), "switchyard": float("inf")}
            for _ in range(repeats):
                for loop, fn in (("raw", raw), ("switchyard", sy)):
                    start = time.perf_counter()
                    for _ in range(number):
                        fn()
                    best[loop] = min(best[loop], (time.perf_counter() - start) / number)
                gc.collect()
            costs.append(CallCost(precision, name, best["raw"] * 1e6, best["switchyard"] * 1e6))
    finally:
        gc.enable()
        runtime.teardown()
    return costs


def cost_table(costs: Sequence[CallCost]) -> str:
    rows = [("precision", "call", "raw us", "switchyard us", "added us")]
    for precision in dict.fromkeys(c.precision for c in costs):
        mine = [c for c in costs if c.precision == precision]
        for c in mine:
            rows.append(
                (
                    precision,
                    c.call,
                    f"{c.raw_us:.2f}",
                    f"{c.switchyard_us:.2f}",
                    f"{c.added_us:+.2f}",
                )
            )
        rows.append((precision, "whole step", "", "", f"{sum(c.added_us for c in mine):+.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "switchyard": metadata.version("switchyard"),
        "load_average_at_start": _load(),
    }


def _load() -> str:
    """The 1-, 5- and 15-minute load averages: other programs competing for the cores."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Per-step time of a training step through switchyard vs plain PyTorch."
    )
    parser.add_argument(
        "--sizes", default="small,medium", help=f"comma-separated, from {', '.join(SIZES)}"
    )
    parser.add_argument(
        "--precisions", default=",".join(PRECISIONS), help="comma-separated, from %(default)s"
    )
    parser.add_argument("--pairs", type=int, default=200, help="measured raw/switchyard pairs")
    parser.add_argument("--warmup-pairs", type=int, default=10, help="pairs run and discarded")
    parser.add_argument("--block-ms", type=float, default=20.0, help="target length of a block")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: tiny matmuls on shared cores jitter with more)",
    )
    parser.add_argument(
        "--call-repeats",
        type=int,
        default=40,
        help="timings per call for the fixed-cost table (0 skips it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    sizes = [SIZES[name.strip()] for name in args.sizes.split(",") if name.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if args.pairs < 4:
        parser.error("--pairs must be at least 4 (quartiles need them)")
    torch.set_num_threads(args.threads)
    info = machine()
    print(
        f"torch {info['torch']}, switchyard {info['switchyard']}, Python {info['python']}, "
        f"{info['processor']} ({info['cpu_count']} cores), torch threads {args.threads}, "
        f"load average {_load()}"
    )
    print(
        f"{args.pairs} interleaved block pairs of ~{args.block_ms:.0f} ms after "
        f"{args.warmup_pairs} warm-up pairs; medians of per-block mean step times"
    )
    results = []
    for size in sizes:
        for precision in precisions:
            result = measure(
                size,
                precision,
                pairs=args.pairs,
                warmup_pairs=args.warmup_pairs,
                block_seconds=args.block_ms / 1e3,
                threads=args.threads,
                seed=args.seed,
            )
            results.append(result)
            print(
                f"  {size.name} ({size.describe()}) {precision}: "
                f"{result.steps_per_block} steps per block",
                file=sys.stderr,
            )
    for clock, title in CLOCKS.items():
        print(f"\n{title}:")
        print(table(results, clock))
    costs: list[CallCost] = []
    if args.call_repeats > 0:
        number = 2000
        for precision in precisions:
            costs.extend(call_costs(precision, repeats=args.call_repeats, number=number))
        print(
            f"\nfixed cost of each call on an nn.Linear(4, 4), best of {args.call_repeats} x "
            f"{number} calls (wall clock):"
        )
        print(cost_table(costs))
    print()
    info["load_average_at_end"] = _load()
    print(f"load average at the end: {info['load_average_at_end']}")
    print(
        f"target: at {', '.join(TARGET_PRECISIONS)} a switchyard step costs at most "
        f"{TARGET_OVERHEAD * 100:.0f}% more than the raw step (overhead = switchyard median / "
        "raw median - 1). bf16-mixed is compared with a hand-written torch.autocast loop."
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "settings": {
                        "pairs": args.pairs,
                        "warmup_pairs": args.warmup_pairs,
                        "block_ms": args.block_ms,
                        "threads": args.threads,
                        "seed": args.seed,
                    },
                    "target_overhead": TARGET_OVERHEAD,
                    "results": [asdict(r) for r in results],
                    "call_costs": [{**asdict(c), "added_us": c.added_us} for c in costs],
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
