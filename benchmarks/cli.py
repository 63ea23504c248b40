"""``python -m benchmarks``: list the scenarios, run them, render a run's report.

python -m benchmarks list
python -m benchmarks run [--scenario NAME ...] [--quick] [--programs raw,switchyard,...]
                         [--out DIR]
python -m benchmarks report RUN.json [...] [--document docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import machine
from benchmarks.environments import ROOT
from benchmarks.report import Run, render
from benchmarks.results import PROGRAMS, Context, Scenario

SCENARIO_MODULES = (
    "benchmarks.startup",
    "benchmarks.step",
    "benchmarks.instructions",
    "benchmarks.distributed",
    "benchmarks.sharded",
)
"""The modules that define scenarios (each a ``SCENARIOS`` tuple), in the order they run."""


def collect() -> tuple[list[Scenario], dict[str, str]]:
    """Every scenario, and for each module that is missing or fails to import, why."""
    scenarios: list[Scenario] = []
    problems: dict[str, str] = {}
    for name in SCENARIO_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            problems[name] = f"missing ({error})"
            continue
        except Exception as error:  # a broken scenario module must not hide the others
            problems[name] = f"fails to import: {type(error).__name__}: {error}"
            continue
        scenarios.extend(getattr(module, "SCENARIOS", ()))
    return scenarios, problems


def _report_problems(problems: dict[str, str]) -> None:
    for module, why in problems.items():
        print(f"note: scenario module {module} is {why}", file=sys.stderr)


def list_scenarios() -> int:
    """Print every scenario with its programs and description."""
    scenarios, problems = collect()
    width = max((len(s.name) for s in scenarios), default=0)
    for s in scenarios:
        print(f"{s.name:<{width}}  [{','.join(s.programs)}]  {s.description}")
    _report_problems(problems)
    return 0


def _parse_programs(text: str) -> frozenset[str]:
    chosen = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = sorted(chosen - set(PROGRAMS))
    if unknown:
        raise SystemExit(f"unknown programs {unknown}; known: {','.join(PROGRAMS)}")
    return chosen


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the chosen scenarios and write the run's JSON; exit 1 if a scenario failed."""
    scenarios, problems = collect()
    _report_problems(problems)
    by_name = {s.name: s for s in scenarios}
    chosen = args.scenario or list(by_name)
    unknown = [name for name in chosen if name not in by_name]
    if unknown:
        raise SystemExit(
            f"unknown scenarios {unknown}; known: {', '.join(by_name)} "
            "(python -m benchmarks list describes them)"
        )
    programs = _parse_programs(args.programs)
    stamp = datetime.now(UTC)
    out_dir = args.out or ROOT / "runs" / f"benchmarks-{stamp:%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    context = Context(
        quick=args.quick,
        programs=programs,
        out_dir=out_dir,
        log_file=out_dir / "log.txt",
        build_envs=args.build_envs,
    )
    record = Run(
        command=["python", "-m", "benchmarks", *argv],
        date=stamp.isoformat(timespec="seconds"),
        quick=args.quick,
        machine=machine.describe(),
        environments={},
        load_before=machine.load_average(),
    )
    started = time.perf_counter()
    for name in chosen:
        scenario = by_name[name]
        context.log(f"== {name}: {scenario.description}")
        try:
            record.comparisons.extend(scenario.run(context))
        except Exception as error:  # one failing scenario must not lose the others' results
            context.log(traceback.format_exc())
            record.errors.append({"scenario": name, "error": f"{type(error).__name__}: {error}"})
    record.errors.extend(context.failures)
    record.load_after = machine.load_average()
    record.duration_s = round(time.perf_counter() - started, 1)
    used = {c.program for c in record.comparisons} | {"raw"}
    for program in sorted(used & set(PROGRAMS)):
        record.environments[program] = machine.versions(context.python_for(program))
    path = out_dir / "run.json"
    record.write(path)
    context.log(f"wrote {path} ({len(record.comparisons)} comparisons)")
    for failure in record.errors:
        context.log(f"FAILED {failure['scenario']}: {failure['error']}")
    return 1 if record.errors else 0


def report(args: argparse.Namespace) -> int:
    """Render the runs' tables and plots into the results page."""
    runs = [Run.read(path) for path in args.runs]
    written = render(runs, args.document, None if args.no_plots else args.plots)
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="switchyard against raw PyTorch, Lightning Fabric and Accelerate.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the scenarios")
    p = sub.add_parser("run", help="run scenarios and write the run's JSON")
    p.add_argument("--scenario", action="append", help="a scenario to run (repeatable; all)")
    p.add_argument("--quick", action="store_true", help="few repetitions: checks, not figures")
    p.add_argument(
        "--programs",
        default=",".join(PROGRAMS),
        help="comma-separated programs to compare with raw (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, help="folder of the run (default runs/benchmarks-DATE)")
    p.add_argument(
        "--build-envs",
        action="store_true",
        help="let scenarios build the environments that take long (DeepSpeed's); without it "
        "they use one already built or are skipped, saying how to build it",
    )
    p = sub.add_parser("report", help="render runs into docs/benchmarks.md and its plots")
    p.add_argument("runs", nargs="+", type=Path, help="run.json files")
    p.add_argument("--document", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--plots", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--no-plots", action="store_true", help="the tables only (no matplotlib)")
    args = parser.parse_args(argv)
    if args.command == "list":
        return list_scenarios()
    if args.command == "run":
        return run(args, argv)
    return report(args)
