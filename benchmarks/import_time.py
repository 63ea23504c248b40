"""What ``import switchyard`` and plugin discovery add to a script's start-up, on top of torch.

Each run is a fresh interpreter (``sys.executable``), so nothing is cached in ``sys.modules``.
Two programs alternate, after warm-up runs that fill the operating system's file cache:

baseline
    ``import torch``
switchyard
    ``import torch``, then ``import switchyard`` and discovery of every installed plugin
    (``switchyard.default_registry().registrations(kind)`` for each kind), which is what the first
    ``Runtime()`` of a process pays; then, reported apart, ``Runtime(accelerator="cpu",
    devices=1)`` itself (selection, importing the chosen implementations).

Times are taken inside the child with ``time.perf_counter`` around the imports; interpreter
start-up is not included. torch is imported first in both programs, so in the switchyard program
the time after ``import torch`` is switchyard's alone; its CPU time (``time.process_time``) is
shown as well, as it is less disturbed by other programs on the machine. The difference between
the two programs' medians is printed too, as a cross-check; it carries the much larger run-to-run
spread of ``import torch``. Optionally (on by default) one ``python -X importtime`` run lists the modules
that switchyard's part imports, by their own import time.

    .venv/bin/python benchmarks/import_time.py
    .venv/bin/python benchmarks/import_time.py --runs 30 --json runs/import_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TARGET_MS = 30.0
"""The goal: ``import switchyard`` plus discovery adds less than 30 ms to ``import torch``."""

BASELINE = """\
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "total": t1 - t0}))
"""

SWITCHYARD = """\
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
c1 = time.process_time()
import switchyard
t2 = time.perf_counter()
registry = switchyard.default_registry()
for kind in ("accelerator", "strategy", "precision", "environment"):
    registry.registrations(kind)
t3 = time.perf_counter()
c3 = time.process_time()
runtime = switchyard.Runtime(accelerator="cpu", devices=1)
t4 = time.perf_counter()
print(json.dumps({
    "torch": t1 - t0,
    "import_switchyard": t2 - t1,
    "discovery": t3 - t2,
    "switchyard": t3 - t1,
    "switchyard_cpu": c3 - c1,
    "total": t3 - t0,
    "runtime": t4 - t3,
    "plugins": sorted(registry.plugins),
    "failures": [f"{f.plugin.name}: {f.error}" for f in registry.failures],
}))
"""


def run_child(
    code: str, env: dict[str, str], extra_args: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *extra_args, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )


def timed_child(code: str, env: dict[str, str]) -> dict[str, Any]:
    result = run_child(code, env)
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def quartiles_ms(values: Sequence[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1 * 1e3, q2 * 1e3, q3 * 1e3


def importtime_report(top: int, env: dict[str, str]) -> list[tuple[int, int, str]]:
    """``(self_us, cumulative_us, module)`` for modules imported after torch in the switchyard
    program, largest own time first."""
    stderr = run_child(SWITCHYARD, env, ["-X", "importtime"]).stderr.splitlines()
    rows: list[tuple[int, int, str]] = []
    after_torch = False
    for line in stderr:
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        fields = line[len("import time:") :].split("|")
        if len(fields) != 3:
            continue
        own, cumulative, name = int(fields[0]), int(fields[1]), fields[2].rstrip()
        if not after_torch:
            # a top-level module is printed when its import (nested ones included) finishes
            after_torch = name == " torch"
            continue
        rows.append((own, cumulative, name))
    rows.sort(key=lambda row: -row[0])
    return rows[:top]


def _load() -> str:
    """The 1-, 5- and 15-minute load averages: other programs competing for the cores."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Start-up time that import switchyard and plugin discovery add to torch."
    )
    parser.add_argument("--runs", type=int, default=15, help="measured runs of each program")
    parser.add_argument("--warmup", type=int, default=2, help="discarded runs of each program")
    parser.add_argument("--top", type=int, default=15, help="modules listed from -X importtime")
    parser.add_argument("--no-importtime", action="store_true", help="skip the -X importtime run")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the children with the environment as it is; where PYTHONDONTWRITEBYTECODE is "
        "set, switchyard's modules are then compiled from source on every import",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.runs < 4:
        parser.error("--runs must be at least 4 (quartiles need them)")
    if args.warmup < 1 and not args.no_bytecode_cache:
        parser.error("--warmup must be at least 1: the first runs fill the bytecode cache")
    with tempfile.TemporaryDirectory(prefix="switchyard-pycache-") as pycache:
        # here, not at the top: importing switchyard in this process is not what is measured
        from switchyard.testing.subprocesses import child_environment

        # with pycache, bytecode is written to and read from that folder even where
        # PYTHONDONTWRITEBYTECODE is set, so that after the warm-up runs nothing is compiled
        # from source, as with any installed package, and the checkout gets no __pycache__
        cache = None if args.no_bytecode_cache else pycache
        return measure(args, child_environment(import_path=False, bytecode_cache=cache))


def measure(args: argparse.Namespace, env: dict[str, str]) -> int:
    load_at_start = _load()
    baseline: list[dict[str, Any]] = []
    switchyard: list[dict[str, Any]] = []
    for run in range(args.warmup + args.runs):
        pair = [(BASELINE, baseline), (SWITCHYARD, switchyard)]
        for code, into in pair if run % 2 == 0 else pair[::-1]:
            measured = timed_child(code, env)
            if run >= args.warmup:
                into.append(measured)

    last = switchyard[-1]
    print(
        f"Python {platform.python_version()} ({sys.executable}), {platform.platform()}, "
        f"{os.cpu_count()} cores, load average {load_at_start} at the start, {_load()} now"
    )
    print(f"plugins discovered: {', '.join(last['plugins'])}")
    if args.no_bytecode_cache:
        writes = "off" if env.get("PYTHONDONTWRITEBYTECODE") else "on"
        print(f"bytecode: the environment's own (writing .pyc files is {writes})")
    else:
        print("bytecode: cached in a temporary PYTHONPYCACHEPREFIX, filled by the warm-up runs")
    if last["failures"]:
        print(f"plugin failures: {'; '.join(last['failures'])}")
    print(
        f"{args.runs} fresh interpreters per program, alternating, after {args.warmup} warm-up "
        "runs each; milliseconds, median [IQR]\n"
    )

    def line(label: str, values: Sequence[float], note: str = "") -> dict[str, float]:
        q1, q2, q3 = quartiles_ms(values)
        print(f"  {label:<44} {q2:9.1f}  [{q1:.1f}-{q3:.1f}]{note}")
        return {"median_ms": q2, "q1_ms": q1, "q3_ms": q3}

    summary: dict[str, Any] = {}
    print('baseline: python -c "import torch"')
    summary["baseline_import_torch"] = line("import torch", [r["torch"] for r in baseline])
    print('switchyard: python -c "import torch; import switchyard; <discovery>"')
    summary["import_torch"] = line("import torch", [r["torch"] for r in switchyard])
    summary["import_switchyard"] = line(
        "import switchyard", [r["import_switchyard"] for r in switchyard]
    )
    summary["discovery"] = line(
        "discovery (registrations of every kind)", [r["discovery"] for r in switchyard]
    )
    added = [r["switchyard"] for r in switchyard]
    added_median = statistics.median(added) * 1e3
    verdict = "met" if added_median < TARGET_MS else "NOT met"
    summary["switchyard_total"] = line(
        "switchyard total (import + discovery)",
        added,
        f"   target < {TARGET_MS:.0f} ms: {verdict}",
    )
    summary["switchyard_total_cpu"] = line(
        "the same, in CPU time (time.process_time)", [r["switchyard_cpu"] for r in switchyard]
    )
    summary["runtime"] = line(
        'then Runtime(accelerator="cpu", devices=1)', [r["runtime"] for r in switchyard]
    )
    difference = (
        statistics.median(r["total"] for r in switchyard)
        - statistics.median(r["total"] for r in baseline)
    ) * 1e3
    summary["difference_of_medians_ms"] = difference
    print(
        f"\ncross-check: median(switchyard program) - median(baseline program) = "
        f"{difference:.1f} ms (includes the spread of import torch)"
    )

    modules: list[tuple[int, int, str]] = []
    if not args.no_importtime:
        modules = importtime_report(args.top, env)
        print(
            f"\npython -X importtime, one run: modules imported after torch, by own time "
            f"(top {args.top}; microseconds)"
        )
        print(f"  {'self':>7}  {'cumulative':>10}  module")
        for own, cumulative, name in modules:
            print(f"  {own:>7}  {cumulative:>10}  {name}")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "cpu_count": os.cpu_count(),
                    "load_average_at_start": load_at_start,
                    "bytecode_cache": not args.no_bytecode_cache,
                    "runs": args.runs,
                    "warmup": args.warmup,
                    "target_ms": TARGET_MS,
                    "summary": summary,
                    "baseline_runs": baseline,
                    "switchyard_runs": switchyard,
                    "importtime_top": [
                        {"self_us": own, "cumulative_us": cumulative, "module": name.strip()}
                        for own, cumulative, name in modules
                    ],
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
