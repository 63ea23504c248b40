"""Launch-to-first-step latency of a 2-process DDP job: switchyard's launchers against torchrun.

The wall time from starting a command until the first training step has completed on every
rank. The driver takes ``time.time()`` just before ``subprocess.Popen``; each worker, after its
first ``optimizer.step()`` and a barrier, takes ``time.time()`` again and writes it to a file;
the latency is the latest of the ranks' times minus the driver's. Programs, each run as a fresh
command:

torchrun
    ``python -m torch.distributed.run --standalone --nproc-per-node 2 this.py`` running a
    plain PyTorch DDP script (``init_process_group("gloo")``, ``DistributedDataParallel``, a
    ``DataLoader`` with a ``DistributedSampler``, ``AdamW``): the baseline.
torchrun+switchyard
    (only with ``--programs all`` or when named) the same torchrun command running the same
    training written with switchyard (``Runtime(accelerator="cpu", strategy="ddp",
    devices=2)``): what switchyard costs inside the workers (its import, discovery, selection
    and setup) when the launcher is torchrun's.
switchyard run
    ``python -m switchyard run --devices 2 this.py`` with the switchyard script.
python script.py
    ``python this.py`` with the switchyard script, whose ``runtime.launch()`` re-runs it as two
    processes (the in-script launcher: torchrun's machinery started from inside the script,
    after the script has imported torch and switchyard itself).

Every worker also records when its process started (from ``/proc``, Linux only), when the script
began, when its imports were done, when the process group was up (``init_process_group`` or
``runtime.launch()`` returned) and when the model, optimizer and loader were set up, so the
latency can be split into phases; the time until the launching command exited is recorded too.
All children get ``OMP_NUM_THREADS=1``.

Programs alternate, the order rotating from one repetition to the next, after warm-up
repetitions that are discarded (they fill the file-system cache and, as in ``import_time.py``,
a temporary bytecode cache: ``PYTHONPYCACHEPREFIX``, so that nothing is compiled from source in
the measured runs even where ``PYTHONDONTWRITEBYTECODE`` is set; ``--no-bytecode-cache`` leaves
the environment as it is). Reported: each program's median and spread, the difference from
torchrun in seconds and as a ratio of the medians, and the median of the per-repetition
differences with a distribution-free confidence interval for it; then the median time to each
phase. This is a measurement, not a test: nothing here fails on a slow result.

    .venv/bin/python benchmarks/launch_latency.py
    .venv/bin/python benchmarks/launch_latency.py --programs all --repeats 12 --json runs/launch_latency_all.json
"""

from __future__ import annotations

import time

SCRIPT_STARTED = time.time()  # as early as possible: the worker's script begins here

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

NPROC = 2
SCRIPT = Path(__file__).resolve()

PHASES = (
    "process_started",
    "script_started",
    "imported",
    "group_ready",
    "set_up",
    "first_step",
    "torn_down",
)
"""What each worker records, in order (``time.time()``); ``first_step`` is after the first
``optimizer.step()`` and a barrier."""

# the training: the same small MLP as ddp_throughput.py, one step is all that is timed here
FEATURES, HIDDEN, CLASSES, BATCH, SAMPLES, SEED = 128, 256, 10, 64, 8192, 0


# -- the worker: runs in each process of a job --------------------------------------------------


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
        pass
    return None


def worker(kind: str, out: Path) -> None:
    """Set up and run one training step, then write this rank's timestamps to ``out``."""
    times: dict[str, float | None] = {
        "process_started": process_start_time(),
        "script_started": SCRIPT_STARTED,
    }
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    if kind == "raw":
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data.distributed import DistributedSampler

        times["imported"] = time.time()
        dist.init_process_group("gloo")
        times["group_ready"] = time.time()
        rank, world = dist.get_rank(), dist.get_world_size()
    elif kind == "switchyard":
        from switchyard import Runtime

        times["imported"] = time.time()
        runtime = Runtime(accelerator="cpu", strategy="ddp", devices=NPROC)
        runtime.launch()  # the in-script launcher: the launching process ends in here
        times["group_ready"] = time.time()
        rank, world = runtime.global_rank, runtime.world_size
    else:
        raise ValueError(f"unknown worker kind {kind!r}")

    generator = torch.Generator().manual_seed(SEED + 1)
    labels = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
    dataset = TensorDataset(torch.randn(SAMPLES, FEATURES, generator=generator), labels)
    torch.manual_seed(SEED)
    model: nn.Module = nn.Sequential(
        nn.Linear(FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    if kind == "raw":
        model = DistributedDataParallel(model)
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=0
        )
        sampler.set_epoch(0)
        loader: Any = DataLoader(dataset, batch_size=BATCH, sampler=sampler)
    else:
        model, optimizer = runtime.setup(model, optimizer)
        loader = runtime.setup_dataloaders(DataLoader(dataset, batch_size=BATCH, shuffle=True))
    times["set_up"] = time.time()

    x, y = next(iter(loader))
    optimizer.zero_grad()
    loss: Any = loss_fn(model(x), y)
    if kind == "raw":
        loss.backward()
    else:
        runtime.backward(loss)
    optimizer.step()
    dist.barrier()
    times["first_step"] = time.time()

    if kind == "raw":
        dist.destroy_process_group()
    else:
        runtime.teardown()
    times["torn_down"] = time.time()
    tmp = out / f"rank{rank}.tmp"
    tmp.write_text(json.dumps({"rank": rank, "world_size": world, "kind": kind, **times}))
    tmp.replace(out / f"rank{rank}.json")


# -- the driver -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    name: str
    kind: str
    """Which worker it runs: ``raw`` or ``switchyard``."""
    launcher: str
    """``torchrun``, ``switchyard-run`` or ``script``."""

    def command(self, out: Path) -> list[str]:
        script = [str(SCRIPT), "--worker", self.kind, "--out", str(out)]
        if self.launcher == "torchrun":
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(NPROC),
                *script,
            ]
        if self.launcher == "switchyard-run":
            return [sys.executable, "-m", "switchyard", "run", "--devices", str(NPROC), *script]
        return [sys.executable, *script]

    def shown(self) -> str:
        words = self.command(Path("OUT"))
        words[0] = "python"
        return " ".join(words).replace(str(SCRIPT), "launch_latency.py")


PROGRAMS = {
    p.name: p
    for p in (
        Program("torchrun", "raw", "torchrun"),
        Program("torchrun+switchyard", "switchyard", "torchrun"),
        Program("switchyard run", "switchyard", "switchyard-run"),
        Program("python script.py", "switchyard", "script"),
    )
}
BASELINE = "torchrun"
DEFAULT_PROGRAMS = ("torchrun", "switchyard run", "python script.py")
"""``torchrun+switchyard`` is left out by default to keep a default run under three minutes."""


def run_job(program: Program, folder: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one job; seconds from just before ``Popen`` to each phase (latest rank) and to the
    command's exit."""
    out = folder / "ranks"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    log = folder / "job.log"
    with log.open("w") as handle:
        start = time.time()
        proc = subprocess.Popen(
            program.command(out), stdout=handle, stderr=subprocess.STDOUT, env=env
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SystemExit(f"{program.name}: no exit after {timeout:.0f} s; log: {log}") from None
        exited = time.time()
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    failed_on_exit: str | None = None
    if code != 0 or len(ranks) != NPROC:
        kept = Path(tempfile.mkdtemp(prefix="switchyard-launch-bench-failed-")) / log.name
        shutil.copyfile(log, kept)
        if len(ranks) != NPROC:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise SystemExit(
                f"{program.name} failed (exit code {code}, {len(ranks)} of {NPROC} ranks "
                f"reported); whole log: {kept}\n{tail}"
            )
        # every rank wrote its times after tearing down: the job failed on its way out
        print(
            f"warning: {program.name} exited with code {code} after every rank had torn down "
            f"and reported; its times are kept (exit time included). Log: {kept}",
            file=sys.stderr,
            flush=True,
        )
        failed_on_exit = f"exit code {code}, log {kept}"
    result: dict[str, Any] = {}
    for phase in PHASES:
        values = [r[phase] for r in ranks]
        result[phase] = None if None in values else max(values) - start
    result["exited"] = exited - start
    if failed_on_exit is not None:
        result["failed_on_exit"] = failed_on_exit
    return result


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


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


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Launch-to-first-step latency of 2-process DDP: switchyard vs torchrun."
    )
    parser.add_argument(
        "--repeats", type=int, default=6, help="measured runs of each program (default 6)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="discarded runs of each program")
    parser.add_argument(
        "--programs",
        default=",".join(DEFAULT_PROGRAMS),
        help=f"comma-separated, from: {', '.join(PROGRAMS)}, or 'all' (default: "
        f"{', '.join(DEFAULT_PROGRAMS)}); torchrun is always included",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the children with the environment as it is; where PYTHONDONTWRITEBYTECODE is "
        "set, switchyard's modules are then compiled from source in every process",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per job")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    # worker mode: how the jobs run this file
    parser.add_argument("--worker", choices=("raw", "switchyard"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        worker(args.worker, args.out)
        return 0

    names = (
        list(PROGRAMS)
        if args.programs.strip() == "all"
        else [n.strip() for n in args.programs.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown:
        parser.error(f"unknown program(s) {unknown}; choose from {', '.join(PROGRAMS)}")
    if BASELINE not in names:
        names.insert(0, BASELINE)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.warmup < 1 and not args.no_bytecode_cache:
        parser.error("--warmup must be at least 1: the first runs fill the bytecode cache")
    programs = [PROGRAMS[n] for n in names]
    with tempfile.TemporaryDirectory(prefix="switchyard-launch-bench-") as tmp:
        pycache = None if args.no_bytecode_cache else str(Path(tmp) / "pycache")
        # here, not at the top: this file is also the raw job's worker, which must not import it
        from switchyard.testing.subprocesses import child_environment

        # no distributed-job or SWITCHYARD_* variables, one torch thread per process
        env = child_environment(
            {"OMP_NUM_THREADS": "1"},
            import_path=False,
            plugin_switches=False,
            bytecode_cache=pycache,
        )
        return measure(args, programs, Path(tmp), env)


def measure(
    args: argparse.Namespace, programs: Sequence[Program], folder: Path, env: dict[str, str]
) -> int:
    load_at_start = _load()
    print(
        f"Python {platform.python_version()}, {platform.platform()}, {_cpu_model()} "
        f"({os.cpu_count()} cores), load average {load_at_start}"
    )
    print(
        f"{NPROC} processes, OMP_NUM_THREADS=1, bytecode "
        + ("as the environment has it" if args.no_bytecode_cache else "cached (warm-up fills it)")
    )
    for p in programs:
        print(f"  {p.name:<20} {p.shown()}")
    print(
        f"{args.repeats} runs of each, alternating (order rotating), after {args.warmup} "
        "warm-up runs each\n"
    )
    print("  ".join(("run", "load", *(p.name for p in programs))))
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for number in range(args.warmup + args.repeats):
        shift = number % len(programs)
        order = [*programs[shift:], *programs[:shift]]
        record: dict[str, Any] = {
            "run": number - args.warmup,
            "order": [p.name for p in order],
            "load_1min": _load1(),
            "jobs": {},
        }
        for program in order:
            record["jobs"][program.name] = run_job(program, folder, env, args.timeout)
        measured = number >= args.warmup
        label = str(record["run"]) if measured else "warm-up"
        cells = [f"{record['jobs'][p.name]['first_step']:.3f}" for p in programs]
        print("  ".join((label, f"{record['load_1min']:.2f}", *cells)), flush=True)
        if measured:
            runs.append(record)
    elapsed = time.perf_counter() - started

    def values(name: str, phase: str) -> list[float]:
        return [r["jobs"][name][phase] for r in runs if r["jobs"][name][phase] is not None]

    base = statistics.median(values(BASELINE, "first_step"))
    rows: list[tuple[str, ...]] = [
        (
            "program",
            "first step: median [IQR]",
            "min-max",
            "- torchrun",
            "/ torchrun",
            "per run: - torchrun [IQR]",
            "interval of that median",
        )
    ]
    summary: dict[str, Any] = {}
    for p in programs:
        firsts = values(p.name, "first_step")
        q1, q2, q3 = quartiles(firsts)
        paired = [r["jobs"][p.name]["first_step"] - r["jobs"][BASELINE]["first_step"] for r in runs]
        d1, d2, d3 = quartiles(paired)
        low, high, cover = median_interval(paired)
        summary[p.name] = {
            "first_step_quartiles_s": [q1, q2, q3],
            "difference_of_medians_s": q2 - base,
            "ratio_of_medians": q2 / base,
            "paired_difference_quartiles_s": [d1, d2, d3],
            "paired_difference_median_interval_s": [low, high, cover],
            "phases_median_s": {
                phase: statistics.median(values(p.name, phase)) if values(p.name, phase) else None
                for phase in (*PHASES, "exited")
            },
        }
        rows.append(
            (
                p.name,
                f"{q2:.3f} [{q1:.3f}-{q3:.3f}]",
                f"{min(firsts):.3f}-{max(firsts):.3f}",
                f"{q2 - base:+.3f} s",
                f"{q2 / base:.3f}",
                f"{d2:+.3f} [{d1:+.3f}..{d3:+.3f}]",
                "-" if p.name == BASELINE else f"{low:+.3f}..{high:+.3f} ({cover * 100:.0f}%)",
            )
        )
    print(
        "\nlaunch to first step completed on every rank, seconds "
        f"({args.repeats} runs; differences and ratios against {BASELINE}):"
    )
    print(format_table(rows))

    phase_rows: list[tuple[str, ...]] = [("program", *(f"{ph}" for ph in (*PHASES, "exited")))]
    for p in programs:
        medians = summary[p.name]["phases_median_s"]
        phase_rows.append(
            (p.name, *("-" if medians[ph] is None else f"{medians[ph]:.3f}" for ph in medians))
        )
    print(
        "\nmedian seconds from the launch until each phase was reached on the last rank "
        "(process_started: /proc, 10 ms resolution; exited: the command's exit):"
    )
    print(format_table(phase_rows))
    failed = [
        f"{name} (run {r['run']}): {job['failed_on_exit']}"
        for r in runs
        for name, job in r["jobs"].items()
        if "failed_on_exit" in job
    ]
    if failed:
        print(f"\n{len(failed)} job(s) failed on their way out, after every rank had reported:")
        for line in failed:
            print(f"  {line}")
    load_at_end = _load()
    print(f"\nload average at the end: {load_at_end}; driver wall time {elapsed:.0f} s")

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
                    "bytecode_cache": not args.no_bytecode_cache,
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                    "programs": {p.name: p.shown() for p in programs},
                    "summary": summary,
                    "runs": runs,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
