"""Cold start: what each library adds to a script's start-up on top of ``import torch``.

Every run is a fresh interpreter of the program's environment. Per round and program, three
children run in an order that cycles through all six permutations: ``import torch`` alone (the
baseline), ``import torch`` and then the library's start (the program), and ``import torch`` alone
again (the A/A run). Rounds interleave the programs too, so switchyard's and Fabric's runs of a
round are neighbours. The library's start is:

- switchyard: ``import switchyard``, discovery of every installed plugin
  (``default_registry().registrations(kind)`` for each kind), ``Runtime(accelerator="cpu",
  devices=1)``;
- Fabric: ``from lightning.fabric import Fabric``, ``Fabric(accelerator="cpu", devices=1)``;
- Accelerate: ``from accelerate import Accelerator``, ``Accelerator(cpu=True)``.

Times are taken inside the child with ``time.perf_counter`` (interpreter start-up excluded).
Besides the totals, each program child reports the time after its own ``import torch`` (the
library's part alone, free of the run-to-run spread of ``import torch``) and its CPU time, and
the child's peak resident memory.

With the bytecode cache, the children read and write ``.pyc`` files in a temporary
``PYTHONPYCACHEPREFIX`` folder that the discarded warm-up runs fill, as for any installed
package. Without it, the children switch to an empty prefix and stop writing bytecode right after
``import torch``, so the library's modules (and only they) are compiled from source, as on the
first run after an install or in a read-only checkout."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.environments import run_json_child
from benchmarks.results import Comparison, Context, Scenario
from benchmarks.stats import paired_ratios, summarize

ADDED_TARGET_S = 0.030
"""switchyard's start adds at most 30 ms to ``import torch`` (issue 11)."""
FABRIC_FRACTION_TARGET = 1 / 20
"""... and at most a twentieth of what Fabric's adds."""

LIBRARY_START = {
    "raw": "",
    "switchyard": """\
import switchyard
mark("import")
registry = switchyard.default_registry()
for kind in ("accelerator", "strategy", "precision", "environment"):
    registry.registrations(kind)
mark("discovery")
switchyard.Runtime(accelerator="cpu", devices=1)
mark("runtime")
""",
    "fabric": """\
from lightning.fabric import Fabric
mark("import")
Fabric(accelerator="cpu", devices=1)
mark("construct")
""",
    "accelerate": """\
from accelerate import Accelerator
mark("import")
Accelerator(cpu=True)
mark("construct")
""",
}

CHILD = """\
import json, os, resource, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
c1 = time.process_time()
if os.environ.get("BENCH_NO_BYTECODE_CACHE"):
    sys.pycache_prefix = os.environ["BENCH_NO_BYTECODE_CACHE"]
    sys.dont_write_bytecode = True
marks = {}
def mark(name):
    marks[name] = time.perf_counter() - t1
LIBRARY_START
t2 = time.perf_counter()
print(json.dumps({
    "torch": t1 - t0,
    "added": t2 - t1,
    "added_cpu": time.process_time() - c1,
    "total": t2 - t0,
    "marks": marks,
    "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


@dataclass(frozen=True)
class Timing:
    """Measured and discarded rounds."""

    rounds: int
    warmup_rounds: int


FULL = Timing(rounds=20, warmup_rounds=2)
FULL_NO_CACHE = Timing(rounds=8, warmup_rounds=1)
"""Fewer rounds without the cache: Fabric's start then compiles lightning, 20+ s a run."""
QUICK = Timing(rounds=3, warmup_rounds=1)


def child_code(program: str) -> str:
    """The Python source a child of ``program`` runs."""
    return CHILD.replace("LIBRARY_START\n", LIBRARY_START[program])


def _child_env(cache_dir: Path, no_cache_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    if no_cache_dir is not None:
        env["BENCH_NO_BYTECODE_CACHE"] = str(no_cache_dir)
    return env


def measure(
    context: Context, programs: list[str], timing: Timing, bytecode_cache: bool
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``runs[program][role]``: the children's reports, role ``base``, ``program`` or ``aa``."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        p: {"base": [], "program": [], "aa": []} for p in programs
    }
    pythons = {p: context.python_for(p) for p in programs}
    with tempfile.TemporaryDirectory(prefix="benchmarks-pycache-") as tmp:
        cache_dir, empty = Path(tmp) / "cache", Path(tmp) / "empty"
        empty.mkdir()
        env = _child_env(cache_dir, None if bytecode_cache else empty)
        orders = itertools.cycle(itertools.permutations(("base", "program", "aa")))
        for round_ in range(timing.warmup_rounds + timing.rounds):
            rotation = programs[round_ % len(programs) :] + programs[: round_ % len(programs)]
            for program in rotation:
                for role in next(orders):
                    code = child_code(program if role == "program" else "raw")
                    report = run_json_child(pythons[program], ["-c", code], timeout=300, env=env)
                    if round_ >= timing.warmup_rounds:
                        runs[program][role].append(report)
            context.log(f"  round {round_ + 1}/{timing.warmup_rounds + timing.rounds}")
    return runs


def _comparison(
    scenario: str,
    program: str,
    metric: str,
    unit: str,
    roles: Mapping[str, list[dict[str, Any]]],
    key: str,
    notes: str,
) -> Comparison:
    prog, base, aa = ([r[key] for r in roles[role]] for role in ("program", "base", "aa"))
    added = [r["added"] for r in roles["program"]]
    extra = {"added ms in-process": summarize(added).median * 1e3}
    extra["added CPU ms in-process"] = (
        summarize([r["added_cpu"] for r in roles["program"]]).median * 1e3
    )
    for mark in roles["program"][0]["marks"]:
        extra[f"{mark} ms (cumulative)"] = (
            summarize([r["marks"][mark] for r in roles["program"]]).median * 1e3
        )
    return Comparison(
        scenario=scenario,
        metric=metric,
        unit=unit,
        better="lower",
        program=program,
        baseline="raw import torch",
        program_values=tuple(prog),
        baseline_values=tuple(base),
        ratios=tuple(paired_ratios(prog, base)),
        aa_ratios=tuple(paired_ratios(aa, base)),
        target=None,
        notes=notes,
        extra=extra if metric == "cold start" else {},
    )


def _own_torch(
    scenario: str,
    program: str,
    roles: Mapping[str, list[dict[str, Any]]],
    notes: str,
    difference_target: float | None,
) -> Comparison:
    """The program children's totals against their own ``import torch``: the difference is the
    library's start alone, free of the spread of ``import torch`` between processes. The A/A
    ratios are the baseline children's, as for the cold start across processes."""
    prog = [r["total"] for r in roles["program"]]
    own = [r["torch"] for r in roles["program"]]
    aa = [r["total"] for r in roles["aa"]]
    base = [r["total"] for r in roles["base"]]
    return Comparison(
        scenario=scenario,
        metric="cold start over own import torch",
        unit="s",
        better="lower",
        program=program,
        baseline="import torch, same process",
        program_values=tuple(prog),
        baseline_values=tuple(own),
        ratios=tuple(paired_ratios(prog, own)),
        aa_ratios=tuple(paired_ratios(aa, base)),
        target=None,
        notes=notes,
        difference_target=difference_target,
    )


def _scenario(name: str, bytecode_cache: bool) -> Scenario:
    programs = ("switchyard", "fabric", "accelerate")
    cache_words = "with" if bytecode_cache else "without"

    def run(context: Context) -> list[Comparison]:
        chosen = [p for p in programs if p in context.programs]
        if not chosen:
            return []
        timing = QUICK if context.quick else FULL if bytecode_cache else FULL_NO_CACHE
        runs = measure(context, chosen, timing, bytecode_cache)
        out: list[Comparison] = []
        for program in chosen:
            notes = f"fresh process per run, {cache_words} a bytecode cache for the library"
            target = ADDED_TARGET_S if program == "switchyard" else None
            out.append(_comparison(name, program, "cold start", "s", runs[program], "total", notes))
            out.append(_own_torch(name, program, runs[program], notes, target))
            out.append(
                _comparison(name, program, "peak RSS", "MiB", runs[program], "rss_mib", notes)
            )
        if "switchyard" in runs and "fabric" in runs:
            ours = [r["added"] for r in runs["switchyard"]["program"]]
            fabric = [r["added"] for r in runs["fabric"]["program"]]
            out.append(
                Comparison(
                    scenario=name,
                    metric="cold start added",
                    unit="s",
                    better="lower",
                    program="switchyard",
                    baseline="fabric",
                    program_values=tuple(ours),
                    baseline_values=tuple(fabric),
                    ratios=tuple(paired_ratios(ours, fabric)),
                    aa_ratios=(),
                    target=FABRIC_FRACTION_TARGET if bytecode_cache else None,
                    notes="time after import torch in the same child, paired by round; "
                    "no A/A (two different libraries)",
                )
            )
        return out

    return Scenario(
        name=name,
        description=f"cold start over import torch, fresh process, {cache_words} bytecode cache",
        programs=("raw", *programs),
        run=run,
    )


def _scenarios() -> Iterator[Scenario]:
    yield _scenario("startup", bytecode_cache=True)
    yield _scenario("startup-no-bytecode-cache", bytecode_cache=False)


SCENARIOS: tuple[Scenario, ...] = tuple(_scenarios())
