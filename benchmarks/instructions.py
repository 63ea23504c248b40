"""Instructions per training step under valgrind's callgrind: the step-time comparison without
the machine's noise.

A timed step on a small shared machine scatters by tens of percent from block to block, so a
ratio target of 1.01 stays "not resolved" however long ``step-*`` runs. The number of
instructions a step executes does not depend on what else the machine does: the same step
executes the same instructions, give or take a few hundred thousand in a hundred million. Here
each program's child runs the very loops of ``step-*`` (:mod:`benchmarks.step`: the library's
loop and the raw loop driving the same model and optimizer objects, checked bit-identical first)
under ``valgrind --tool=callgrind``, and asks callgrind for a dump of its counters around each
block of steps (``callgrind_control --dump``). A round is three blocks, the library's loop, the
raw loop and the raw loop again (the A/A), in an order cycling through the permutations.

An instruction is not a nanosecond: memory stalls, and vector widths differ (valgrind offers
torch no AVX-512, so its kernels run at AVX2 here). What the count does measure exactly is the
work each library adds to a step, which for a fixed cost in Python is what costs the time.
Skipped, saying so, where valgrind is not installed. Under callgrind a program runs about fifty
times slower; a scenario takes a few minutes per program.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.environments import run_json_child
from benchmarks.results import Comparison, Context, Scenario
from benchmarks.stats import paired_ratios, summarize
from benchmarks.step import TARGETS, Workload, prepared_loops

ROLES = ("program", "raw", "raw_aa")


@dataclass(frozen=True)
class Counting:
    """Measured rounds, discarded rounds and steps per block."""

    rounds: int
    warmup_rounds: int
    steps: int


FULL = Counting(rounds=8, warmup_rounds=1, steps=100)
"""Eight rounds: the fewest for which the median's interval reaches 95% (six) with a margin."""
QUICK = Counting(rounds=2, warmup_rounds=1, steps=10)


# -- the worker: runs under callgrind, in the library's environment --------------------------


def dump(label: str) -> None:
    """Have callgrind write its counters since the last dump to a file named after ``label``.

    ``callgrind_control`` reaches this process through a file callgrind polls while the
    program runs, so the wait sleeps (which executes almost nothing) rather than blocking in
    ``wait``."""
    control = subprocess.Popen(
        ["callgrind_control", f"--dump={label}", str(os.getpid())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while control.poll() is None:
        if time.monotonic() > deadline:
            control.kill()
            raise SystemExit(f"callgrind_control --dump={label} did not answer in 120 s")
        time.sleep(0.005)
    if control.returncode != 0:
        raise SystemExit(
            f"callgrind_control --dump={label} failed (exit {control.returncode}): is this "
            "process running under valgrind --tool=callgrind?"
        )


def worker(w: Workload, library_name: str, counting: Counting) -> dict[str, Any]:
    """Blocks of the library's loop and two raw loops, each between two callgrind dumps."""
    library, batches, prepared = prepared_loops(w, library_name)
    loops = {role: prepared[role] for role in ROLES}  # the rounds cycle from this order
    blocks: list[str] = []
    orders = itertools.cycle(itertools.permutations(loops))
    gc.collect()
    gc.disable()
    try:
        for round_ in range(counting.warmup_rounds + counting.rounds):
            for name in next(orders):
                gc.collect()
                dump("gap")  # ends what came before: the collection, the last dump's wait
                for i in range(counting.steps):
                    loops[name](batches[i % len(batches)])
                label = f"{'warmup' if round_ < counting.warmup_rounds else 'block'}-{name}"
                dump(label)
                blocks.append(label)
    finally:
        gc.enable()
        library.teardown()
    return {"version": library.version(), "blocks": blocks, "steps": counting.steps}


# -- the parent: runs each program's worker under callgrind, reads the dumps -----------------


def read_dumps(folder: Path) -> list[tuple[str, int]]:
    """``(label, instructions)`` of every ``callgrind_control --dump`` in ``folder``, in the
    order they were written (callgrind numbers its dump files ``NAME.1``, ``NAME.2``...)."""
    parts = []
    for path in folder.iterdir():
        suffix = path.name.rpartition(".")[2]
        if not suffix.isdigit():
            continue  # the file written at exit
        text = path.read_text(encoding="utf-8", errors="replace")
        label = re.search(r"^desc: Trigger: dump (\S+)$", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if label is None or total is None:
            raise RuntimeError(f"{path}: not a callgrind dump (no trigger or summary line)")
        parts.append((int(suffix), label.group(1), int(total.group(1))))
    return [(label, count) for _, label, count in sorted(parts)]


def measure(context: Context, program: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Instructions per step of each block of ``program``'s worker, by role, and the
    library's version."""
    valgrind = shutil.which("valgrind")
    if valgrind is None or shutil.which("callgrind_control") is None:
        raise FileNotFoundError("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="benchmarks-callgrind-") as tmp:
        folder = Path(tmp)
        data = run_json_child(
            Path(valgrind),
            [
                "--tool=callgrind",
                f"--callgrind-out-file={folder}/callgrind.out",
                str(context.python_for(program)),
                "-m",
                "benchmarks.instructions",
                "--worker",
                json.dumps(spec),
            ],
            timeout=3000,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        dumps = [(label, count) for label, count in read_dumps(folder) if label != "gap"]
    labels = [label for label, _ in dumps]
    if labels != data["blocks"]:
        raise RuntimeError(f"{program}: dumps {labels} do not match the blocks {data['blocks']}")
    per_step: dict[str, Any] = {role: [] for role in ROLES}
    for label, count in dumps:
        kind, _, role = label.partition("-")
        if kind == "block":
            per_step[role].append(count / data["steps"])
    return {**per_step, "version": data["version"]}


def comparisons(
    scenario: str, program: str, w: Workload, data: dict[str, Any], counting: Counting
) -> list[Comparison]:
    prog, raw, aa = (list(data[role]) for role in ROLES)
    target = TARGETS.get(w.precision) if program == "switchyard" else None
    return [
        Comparison(
            scenario=scenario,
            metric="instructions per step",
            unit="instructions",
            better="lower",
            program=program,
            baseline="raw",
            program_values=tuple(prog),
            baseline_values=tuple(raw),
            ratios=tuple(paired_ratios(prog, raw)),
            aa_ratios=tuple(paired_ratios(aa, raw)),
            target=target,
            notes=(
                f"{w.describe()}; {program} {data['version']}; callgrind, "
                f"{counting.steps} steps per block; the step-time target read in instructions"
            ),
            extra={
                "added instructions per step": summarize(
                    [p - r for p, r in zip(prog, raw, strict=True)]
                ).median,
                "A/A instructions per step": summarize(
                    [a - r for a, r in zip(aa, raw, strict=True)]
                ).median,
            },
        )
    ]


def _scenario(name: str, w: Workload) -> Scenario:
    programs = ("switchyard", "fabric", "accelerate")

    def run(context: Context) -> list[Comparison]:
        counting = QUICK if context.quick else FULL
        spec = {"workload": asdict(w), "counting": asdict(counting)}
        out: list[Comparison] = []
        for program in programs:
            if program not in context.programs:
                continue
            context.log(f"{name}: {program} under callgrind...")
            try:
                data = measure(context, program, {**spec, "program": program})
            except FileNotFoundError as error:
                context.log(f"{name}: skipped: {error}")
                return []
            except RuntimeError as error:  # the other programs still run
                context.record_failure(name, program, error)
                continue
            out.extend(comparisons(name, program, w, data, counting))
        return out

    return Scenario(
        name=name,
        description=f"instructions per step under callgrind, {w.describe()}",
        programs=("raw", *programs),
        run=run,
    )


def _scenarios() -> Iterator[Scenario]:
    for precision in TARGETS:
        yield _scenario(f"instructions-mlp-{precision}", Workload("mlp", precision))


SCENARIOS: tuple[Scenario, ...] = tuple(_scenarios())


def main(argv: Sequence[str] | None = None) -> int:
    """The worker's entry point: ``--worker SPEC`` prints its blocks as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--worker", required=True, help="JSON: workload, program, counting")
    spec = json.loads(parser.parse_args(argv).worker)
    data = worker(Workload(**spec["workload"]), spec["program"], Counting(**spec["counting"]))
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
