"""The benchmarks' command and its statistics (benchmarks/): no timing is asserted on, only that
the figures are computed right and that a run produces a complete, readable record.

The Fabric and Accelerate environments are not built here (minutes, and network); their scenario
code runs only under ``python -m benchmarks run``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the benchmarks are a top-level folder, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import cli, report  # noqa: E402
from benchmarks.report import BEGIN, END, Run  # noqa: E402
from benchmarks.results import Comparison  # noqa: E402
from benchmarks.stats import (  # noqa: E402
    fewest_values,
    median_interval,
    paired_ratios,
    summarize,
)


def comparison(**changes: object) -> Comparison:
    values: dict[str, object] = {
        "scenario": "step-mlp-32-true",
        "metric": "step time",
        "unit": "s",
        "better": "lower",
        "program": "switchyard",
        "baseline": "raw",
        "program_values": (1.0e-3, 1.1e-3, 1.05e-3),
        "baseline_values": (1.0e-3, 1.0e-3, 1.0e-3),
        "ratios": tuple(1.0 + i / 1000 for i in range(30)),
        "aa_ratios": (0.99, 1.0, 1.01),
        "target": 1.01,
        "notes": "synthetic",
        "extra": {"added µs per step": 12.5},
    }
    values.update(changes)
    return Comparison(**values)  # type: ignore[arg-type]


def test_summarize_gives_inclusive_quartiles_and_range() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.n, s.median, s.q1, s.q3, s.min, s.max) == (5, 3.0, 2.0, 4.0, 1.0, 5.0)
    assert summarize([7.0]).median == 7.0
    with pytest.raises(ValueError, match="at least one value"):
        summarize([])


def test_median_interval_holds_the_coverage_it_claims() -> None:
    low, high, coverage = median_interval(range(30))
    # order statistics 10 and 21 of 30 (1-based): binomial coverage 95.7%
    assert (low, high) == (9, 20)
    assert coverage == pytest.approx(0.9572, abs=1e-4)
    # too few values for 95%: the whole range, with what it does cover
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)
    assert median_interval([5.0]) == (5.0, 5.0, 0.0)
    for n in (6, 10, 17, 40):
        _, _, c = median_interval([float(i) for i in range(n)])
        exact = 1 - 2 * sum(math.comb(n, i) for i in range(1)) / 2**n
        assert c >= 0.95 or c == pytest.approx(exact)
    with pytest.raises(ValueError, match="confidence"):
        median_interval([1.0, 2.0], confidence=1.5)


def test_fewest_values_is_where_the_whole_range_first_covers_enough() -> None:
    for confidence in (0.5, 0.75, 0.9, 0.95, 0.99):
        n = fewest_values(confidence)
        assert median_interval([float(i) for i in range(n)], confidence)[2] >= confidence
        assert median_interval([float(i) for i in range(n - 1)], confidence)[2] < confidence
    assert fewest_values() == 6
    with pytest.raises(ValueError, match="confidence"):
        fewest_values(1.0)


def test_every_full_distributed_plan_can_reach_a_verdict() -> None:
    """A target whose values are too few for a 95% interval reads "not resolved" however the
    run goes (the sharded plans' 5 and 3 rounds of peak memory did)."""
    from benchmarks.distributed import ddp_plan
    from benchmarks.sharded import deepspeed_plan, sharded_plan

    plans = [ddp_plan(False), sharded_plan("fsdp2", "fsdp", False)]
    plans += [deepspeed_plan(stage, False) for stage in (1, 2, 3)]
    for plan in plans:
        if plan.throughput_target is not None:
            assert plan.paired_rounds >= fewest_values(), plan
        if plan.memory_target is not None:
            assert plan.rounds >= fewest_values(), plan


def test_paired_ratios_pair_by_position_and_reject_mismatches() -> None:
    assert paired_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError, match="as many"):
        paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="zero"):
        paired_ratios([1.0], [0.0])


def test_comparison_round_trips_through_json() -> None:
    c = comparison(difference_target=0.03)
    again = Comparison.from_json(json.loads(json.dumps(c.to_json())))
    assert again == c
    with pytest.raises(ValueError, match="unknown comparison fields"):
        Comparison.from_json({**c.to_json(), "speed": 1})


def test_verdicts_read_the_interval_against_the_target() -> None:
    tight_low = tuple(1.0 + i / 10_000 for i in range(30))  # all within 1.0-1.003
    assert comparison(ratios=tight_low).verdict() == "met"
    assert comparison(ratios=tuple(r + 0.1 for r in tight_low)).verdict() == "not met"
    assert comparison(ratios=tuple(0.995 + i / 1000 for i in range(30))).verdict() == "not resolved"
    assert comparison(target=None).verdict() == "no target"
    # three values hold the median with 75% only: no verdict at 95%
    assert comparison(ratios=(1.0, 1.0, 1.0)).verdict() == "not resolved"
    higher = comparison(better="higher", target=0.99, ratios=tight_low)
    assert higher.verdict() == "met"
    with pytest.raises(ValueError, match="better"):
        comparison(better="faster")


def synthetic_run() -> Run:
    return Run(
        command=["python", "-m", "benchmarks", "run", "--quick"],
        date="2026-12-02T00:00:00+00:00",
        quick=True,
        machine={"processor": "test CPU", "cpu_count": 2, "memory_gib": 24, "platform": "Linux"},
        environments={"switchyard": {"python": "3.11.7", "torch": "2.13.0+cpu"}},
        load_before=[0.5, 0.5, 0.5],
        load_after=[0.6, 0.5, 0.5],
        duration_s=1.0,
        comparisons=[comparison(), comparison(program="fabric", target=None, aa_ratios=())],
        errors=[{"scenario": "ddp-throughput", "error": "RuntimeError: synthetic"}],
    )


def test_report_renders_a_table_between_the_markers(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    synthetic_run().write(path)
    document = tmp_path / "benchmarks.md"
    document.write_text(f"# Benchmarks\n\nkept\n\n{BEGIN}\nold\n{END}\n\n## History\n")
    report.render([Run.read(path)], document, plot_dir=None)
    text = document.read_text()
    assert "kept" in text
    assert "## History" in text
    assert "old" not in text
    row = next(line for line in text.splitlines() if line.startswith("| step-mlp-32-true"))
    assert "| switchyard | raw |" in row
    assert "<= 1.01" in row
    assert "not resolved" in row
    assert "added µs per step 12.5" in row
    assert "ddp-throughput failed" in text
    assert "test CPU" in text
    report.render([Run.read(path)], document, plot_dir=None)  # idempotent: one generated part
    assert document.read_text().count(BEGIN) == 1


def test_report_plots_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="requirements/bench.txt is not installed here")
    run = synthetic_run()
    png = report.plot("step-mlp-32-true", run.comparisons, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_run_file_is_named() -> None:
    with pytest.raises(ValueError, match="not a benchmark run"):
        Run.read(ROOT / "pyproject.toml")


def run_benchmarks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_list_names_every_scenario() -> None:
    scenarios, problems = cli.collect()
    assert "benchmarks.step" not in problems
    assert "benchmarks.startup" not in problems
    done = run_benchmarks("list")
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()]
    assert names == [s.name for s in scenarios]
    assert {"startup", "step-mlp-32-true", "step-mlp-no-sync", "calls-32-true"} <= set(names)


def test_unknown_scenarios_and_programs_are_named_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"warp-speed.*known: .*step-mlp-32-true"):
        cli.main(["run", "--scenario", "warp-speed", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"\['jax'\]; known: raw,switchyard,fabric"):
        cli.main(["run", "--scenario", "startup", "--programs", "jax", "--out", str(tmp_path)])
    assert not (tmp_path / "run.json").exists()


@pytest.mark.slow
def test_a_quick_switchyard_step_run_writes_a_complete_record(tmp_path: Path) -> None:
    """The bit-identity check inside the worker must pass, or the run records an error."""
    done = run_benchmarks(
        "run",
        "--quick",
        "--scenario",
        "step-mlp-32-true",
        "--programs",
        "raw,switchyard",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = Run.read(tmp_path / "run.json")
    assert run.errors == []
    assert {c.metric for c in run.comparisons} == {"step time", "step time (CPU)"}
    for c in run.comparisons:
        assert c.program == "switchyard"
        assert c.baseline == "raw"
        assert len(c.ratios) == len(c.aa_ratios) == len(c.program_values) > 0
        assert all(r > 0 for r in c.ratios)
        assert "added µs per step" in c.extra
    assert run.environments["switchyard"]["torch"].startswith("2.13.0")


def _dump_file(folder: Path, number: int, label: str, instructions: int) -> None:
    # the head of a file callgrind writes on `callgrind_control --dump=LABEL`
    (folder / f"callgrind.out.{number}").write_text(
        f"# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 77\ncmd: python\n"
        f"part: {number}\n\ndesc: I1 cache:\ndesc: Timerange: Basic block 1 - 2\n"
        f"desc: Trigger: dump {label}\n\npositions: line\nevents: Ir\n"
        f"summary: {instructions}\n\nfl=(1) x.c\nfn=(1) f\n0 {instructions}\n"
    )


def test_callgrind_dumps_are_read_in_the_order_written(tmp_path: Path) -> None:
    from benchmarks.instructions import read_dumps

    for number, label, count in [(10, "raw", 7), (2, "gap", 5), (1, "warmup-raw", 3)]:
        _dump_file(tmp_path, number, label, count)
    (tmp_path / "callgrind.out").write_text("desc: Trigger: Program termination\nsummary: 9\n")
    assert read_dumps(tmp_path) == [("warmup-raw", 3), ("gap", 5), ("raw", 7)]
    (tmp_path / "callgrind.out.11").write_text("not a dump\n")
    with pytest.raises(RuntimeError, match=r"callgrind.out.11: not a callgrind dump"):
        read_dumps(tmp_path)


def test_instruction_scenarios_skip_without_valgrind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import instructions
    from benchmarks.results import Context

    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    logged: list[str] = []
    context = Context(quick=True, programs=frozenset({"raw", "switchyard"}), out_dir=tmp_path)
    monkeypatch.setattr(context, "log", logged.append)
    (scenario,) = [s for s in instructions.SCENARIOS if s.name == "instructions-mlp-32-true"]
    assert scenario.run(context) == []
    assert context.failures == []
    assert any("skipped: valgrind is not installed" in line for line in logged), logged


def test_instruction_comparisons_carry_the_step_target_and_the_added_count() -> None:
    from benchmarks.instructions import QUICK, comparisons
    from benchmarks.step import Workload

    data = {"program": [110.0, 112.0], "raw": [100.0, 100.0], "raw_aa": [100.0, 101.0]}
    (ours,) = comparisons(
        "x", "switchyard", Workload("mlp", "32-true"), {**data, "version": "0"}, QUICK
    )
    (theirs,) = comparisons(
        "x", "fabric", Workload("mlp", "32-true"), {**data, "version": "0"}, QUICK
    )
    assert ours.target == 1.01
    assert theirs.target is None
    assert ours.ratios == (1.1, 1.12)
    assert ours.aa_ratios == (1.0, 1.01)
    assert ours.extra["added instructions per step"] == 11.0


_HANGING_JOB = """\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1] + ".child", "w").write(str(child.pid))
if sys.argv[2] == "write":
    open(sys.argv[1], "w").write("{}")
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for every purpose here
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.parametrize("writes", [True, False], ids=["hangs-after-writing", "never-writes"])
def test_a_job_that_does_not_end_is_killed_with_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes: bool
) -> None:
    """A job that wrote its figures and hangs at exit keeps them; one that never writes them
    times out; either way nothing it started is left running."""
    import time

    from benchmarks import distributed

    monkeypatch.setattr(distributed, "EXIT_GRACE_S", 1.0)
    done = tmp_path / "done.json"
    command = [sys.executable, "-c", _HANGING_JOB, str(done), "write" if writes else "no"]
    started = time.monotonic()
    if writes:
        code = distributed.run_job(command, tmp_path / "log", dict(os.environ), done, timeout=60)
        assert code == distributed.HUNG_AT_EXIT
    else:
        with pytest.raises(distributed.JobFailed, match="timed out after 3 s"):
            distributed.run_job(command, tmp_path / "log", dict(os.environ), done, timeout=3)
    assert time.monotonic() - started < 30
    child = int(Path(f"{done}.child").read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the job's own child outlived it"
