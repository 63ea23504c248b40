"""Two-process DDP: training throughput and peak memory against raw PyTorch DDP, and the latency
from launch to the first step against torchrun.

Both scenarios start real 2-process jobs (gloo, ``OMP_NUM_THREADS=1`` in every process) running
:mod:`benchmarks.workers.train` or :mod:`benchmarks.workers.launch`. The job machinery here
(:func:`run_job`, :func:`measure_training`) is also what :mod:`benchmarks.sharded` measures
FSDP2 and DeepSpeed with.

How training is measured (:func:`measure_training`), for each program against ``raw``:

paired job
    one 2-process job trains three models side by side on the same process group: raw, raw
    again and the program, in alternating short blocks (the order rotating every round), each
    block between two barriers. The program's blocks against the raw blocks next to them give
    the paired ratios; raw-again against raw gives the A/A ratios, the noise floor of the same
    method. Both processes and the machine state are shared, so this is the sharpest view of
    what the program adds per step.
separate jobs
    rounds of one job per program plus two raw jobs (the second for the A/A), the order
    reversed every other round. Each job's throughput over its whole timed span and its peak
    resident set size (the largest rank's ``ru_maxrss``) are paired round by round; so are the
    bytes of tensors allocated after training (a census of the garbage collector's objects,
    resident or not: ZeRO-3's untouched communication buckets count here, not in the RSS).

Every loop starts from the same seed and sees the same batches, so raw, raw again and
switchyard must end with bit-identical parameters (SHA-256, rank by rank), in every job; if
not, the scenario fails, since the programs would not be doing the same work. Fabric's and
Accelerate's digests are compared and reported (Accelerate shards the data its own way)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.results import Comparison, Context, Scenario
from benchmarks.stats import paired_ratios, summarize
from benchmarks.workers.train import Workload

ROOT = Path(__file__).resolve().parent.parent
NPROC = 2
MIB = 2**20
JOB_TIMEOUT_S = 600.0


# -- running jobs -----------------------------------------------------------------------------


def worker_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every job: no distributed-job or ``SWITCHYARD_*`` variables, one
    torch thread per process, the repository root on ``PYTHONPATH`` (for
    ``-m benchmarks.workers...``), then ``extra``."""
    from switchyard.testing.subprocesses import child_environment

    return child_environment(
        {"OMP_NUM_THREADS": "1", **(extra or {})},
        import_path=False,
        plugin_switches=False,
        pythonpath=[ROOT],
    )


def torchrun(python: Path, module: str, *args: str) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 -m module args``."""
    return [
        str(python),
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(NPROC),
        "-m",
        module,
        *args,
    ]


class JobFailed(RuntimeError):
    """A benchmark job exited without writing its figures."""


EXIT_GRACE_S = 60.0
"""How long a job may take to exit once it has written its figures."""
HUNG_AT_EXIT = -1000
"""The exit code :func:`run_job` reports for a job killed because it did not exit after
writing its figures."""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End the job's whole process group (torchrun and its workers), then reap torchrun."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def run_job(
    command: Sequence[str],
    log: Path,
    env: Mapping[str, str],
    done: Path,
    timeout: float = JOB_TIMEOUT_S,
) -> int:
    """Run one job with its output in ``log``; returns its exit code.

    A job that fails after writing ``done`` (seen as a SIGABRT at exit, "terminate called
    without an active exception") is kept, since its figures are complete; so is one that has
    not exited :data:`EXIT_GRACE_S` after writing it (seen with Lightning Fabric's DDP over
    gloo: both ranks torn down, the processes never ending), which is killed with its process
    group and reported as :data:`HUNG_AT_EXIT`. One that wrote nothing raises
    :class:`JobFailed` with the log's last lines; so does one past ``timeout``, killed with
    its process group so that no worker outlives it."""
    with log.open("w") as handle:
        proc = subprocess.Popen(
            list(command),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=ROOT,
            start_new_session=True,  # its own process group, to end its workers with it
        )
        deadline = time.monotonic() + timeout
        written_at: float | None = None
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if written_at is None and done.exists():
                    written_at = now
                if written_at is not None and now - written_at > EXIT_GRACE_S:
                    _kill_group(proc)
                    return HUNG_AT_EXIT
                if now > deadline:
                    _kill_group(proc)
                    raise JobFailed(
                        f"job timed out after {timeout:.0f} s: {' '.join(command)}; log: {log}"
                    )
                time.sleep(0.05)
        except BaseException:
            if proc.poll() is None:
                _kill_group(proc)
            raise
    if proc.returncode != 0 and not done.exists():
        lines = log.read_text(errors="replace").splitlines()
        raise JobFailed(
            f"job failed (exit code {proc.returncode}): {' '.join(command)}\nlog: {log}\n"
            + "\n".join(lines[-30:])
        )
    return proc.returncode


# -- training jobs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPlan:
    """What :func:`measure_training` runs for one scenario (and one configuration of it)."""

    scenario: str
    strategy: str
    """The worker's ``--strategy``: ``ddp``, ``fsdp``, ``zero1``, ``zero2`` or ``zero3``."""
    workload: Workload
    """The model, data and timing of each separate job."""
    paired_rounds: int
    """Rounds of blocks in the paired job (one block per loop and round)."""
    paired_block_steps: int
    rounds: int
    """Rounds of separate jobs (0: none, and so no memory comparisons)."""
    throughput_target: float | None
    memory_target: float | None
    label: str = ""
    """Put before every metric's name (``"ZeRO-2 "``), for scenarios measuring several
    configurations."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables every job of the plan gets."""
    notes: str = ""
    """Added to every comparison's notes (the environment the jobs ran in...)."""


@dataclass
class TrainingRun:
    """What :func:`measure_training` measured: the comparisons and every job's record."""

    comparisons: list[Comparison]
    jobs: list[dict[str, Any]]
    digests_match: dict[str, bool]
    """Program -> whether its final parameters were bit-identical to raw's on every rank."""


def _blocks(job: Mapping[str, Any], label: str) -> tuple[list[float], float]:
    """Global samples per second of each of ``label``'s blocks (rank 0's clock), and its CPU
    milliseconds per step averaged over the ranks."""
    per_block = job["global_batch"] * job["block_steps"]
    rank0 = [b for b in job["ranks"][0]["blocks"] if b["loop"] == label]
    cpu = [
        sum(b["cpu_s"] for b in rank["blocks"] if b["loop"] == label)
        / (len(rank0) * job["block_steps"])
        for rank in job["ranks"]
    ]
    return [per_block / b["wall_s"] for b in rank0], 1e3 * sum(cpu) / len(cpu)


def _span_rate(job: Mapping[str, Any]) -> float:
    """Global samples per second over a one-loop job's timed span (first to last barrier)."""
    rank0 = job["ranks"][0]
    return len(rank0["blocks"]) * job["global_batch"] * job["block_steps"] / rank0["span_wall_s"]


def _largest_rank(job: Mapping[str, Any], key: str) -> float:
    return max(float(rank[key]) for rank in job["ranks"]) / MIB


class _Jobs:
    """Runs a plan's jobs, numbering their logs and records under one folder."""

    def __init__(self, ctx: Context, plan: TrainingPlan) -> None:
        self.ctx = ctx
        self.plan = plan
        slug = (plan.scenario + "-" + plan.strategy).replace(" ", "-")
        self.folder = ctx.out_dir / "jobs" / slug
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        self.index = 0
        self.env = worker_environment(plan.env)
        self.records: list[dict[str, Any]] = []

    def train(
        self, python: Path, loops: Sequence[str], workload: Workload, group: str
    ) -> dict[str, Any]:
        """Run one training job; ``group`` names the jobs that train the same steps (whose
        final parameters must agree)."""
        name = f"{self.index:03d}-{'+'.join(loops)}"
        self.index += 1
        out = self.folder / f"{name}.json"
        command = torchrun(
            python,
            "benchmarks.workers.train",
            "--strategy",
            self.plan.strategy,
            "--loops",
            ",".join(loops),
            "--workload",
            json.dumps(dataclasses.asdict(workload)),
            "--out",
            str(out),
        )
        started = time.perf_counter()
        code = run_job(command, self.folder / f"{name}.log", self.env, out)
        job: dict[str, Any] = json.loads(out.read_text())
        job.update(name=name, group=group, exit_code=code, python=str(python), load_1min=_load1())
        job["wall_s"] = time.perf_counter() - started
        out.write_text(json.dumps(job, indent=1))
        if code == HUNG_AT_EXIT:
            self.ctx.log(
                f"  warning: {name} had not exited {EXIT_GRACE_S:.0f} s after writing its "
                "figures; killed, figures kept"
            )
        elif code != 0:
            self.ctx.log(f"  warning: {name} exited with {code} after writing its figures")
        self.records.append(job)
        return job


def _load1() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def measure_training(
    ctx: Context, plan: TrainingPlan, pythons: Mapping[str, Path], raw_python: Path
) -> TrainingRun:
    """Measure each program of ``pythons`` (program -> interpreter) against raw, which runs in
    ``raw_python``: a paired job per program, then ``plan.rounds`` rounds of separate jobs;
    see the module's docstring."""
    jobs = _Jobs(ctx, plan)
    w = plan.workload
    paired_w = dataclasses.replace(
        w, blocks=plan.paired_rounds, block_steps=plan.paired_block_steps
    )
    programs = list(pythons)
    comparisons: list[Comparison] = []
    where = f"{plan.scenario} {plan.label}".strip()
    common_notes = (
        f"{w.describe()}; {NPROC} processes (gloo, OMP_NUM_THREADS=1); "
        + (f"{plan.notes}; " if plan.notes else "")
        + f"jobs and logs in {jobs.folder}"
    )

    paired: dict[str, dict[str, Any]] = {}
    for program in programs:
        ctx.log(f"{where}: paired job raw + raw again + {program}")
        paired[program] = jobs.train(pythons[program], ["raw", "raw", program], paired_w, "paired")

    separate: list[dict[str, dict[str, Any]]] = []
    for number in range(plan.rounds):
        order = ["raw", "raw-again", *programs]
        if number % 2:
            order.reverse()
        ctx.log(f"{where}: separate jobs, round {number + 1} of {plan.rounds}: {', '.join(order)}")
        separate.append(
            {
                name: jobs.train(
                    raw_python if name.startswith("raw") else pythons[name],
                    ["raw" if name.startswith("raw") else name],
                    w,
                    "separate",
                )
                for name in order
            }
        )

    digests_match = _check_digests(jobs.records, programs)
    for program in programs:
        job = paired[program]
        values, cpu = _blocks(job, program)
        raw_values, raw_cpu = _blocks(job, "raw")
        again, _ = _blocks(job, "raw-again")
        identical = (
            "final parameters bit-identical to raw's on every rank"
            if digests_match[program]
            else "final parameters differ from raw's (its data order or arithmetic differs)"
        )
        comparisons.append(
            Comparison(
                scenario=plan.scenario,
                metric=f"{plan.label}throughput, paired blocks",
                unit="samples/s",
                better="higher",
                program=program,
                baseline="raw",
                program_values=tuple(values),
                baseline_values=tuple(raw_values),
                ratios=tuple(paired_ratios(values, raw_values)),
                aa_ratios=tuple(paired_ratios(again, raw_values)),
                target=plan.throughput_target,
                notes=(
                    f"one job, raw / raw again / {program} in the same {NPROC} processes, "
                    f"{plan.paired_rounds} rounds of {plan.paired_block_steps}-step blocks; "
                    f"{identical}; {common_notes}"
                ),
                extra={"cpu ms/step": cpu, "raw cpu ms/step": raw_cpu},
            )
        )
        if not separate:
            continue
        rounds_of = [r[program] for r in separate]
        raw_of = [r["raw"] for r in separate]
        again_of = [r["raw-again"] for r in separate]
        separate_notes = f"{plan.rounds} rounds of separate jobs, order alternating; {identical}"
        for metric, unit, better, target, figure in (
            (f"{plan.label}throughput, separate jobs", "samples/s", "higher",
             plan.throughput_target, _span_rate),
            (f"{plan.label}peak RSS", "MiB", "lower", plan.memory_target,
             lambda job: _largest_rank(job, "peak_rss_bytes")),
            (f"{plan.label}tensor memory allocated", "MiB", "lower", plan.memory_target,
             lambda job: _largest_rank(job, "tensor_bytes")),
        ):  # fmt: skip
            program_values = [figure(job) for job in rounds_of]
            baseline_values = [figure(job) for job in raw_of]
            aa_values = [figure(job) for job in again_of]
            comparisons.append(
                Comparison(
                    scenario=plan.scenario,
                    metric=metric,
                    unit=unit,
                    better=better,
                    program=program,
                    baseline="raw",
                    program_values=tuple(program_values),
                    baseline_values=tuple(baseline_values),
                    ratios=tuple(paired_ratios(program_values, baseline_values)),
                    aa_ratios=tuple(paired_ratios(aa_values, baseline_values)),
                    target=target,
                    notes=f"{separate_notes}; per rank, the largest rank; {common_notes}"
                    if unit == "MiB"
                    else f"{separate_notes}; {common_notes}",
                )
            )
    return TrainingRun(comparisons, jobs.records, digests_match)


def _check_digests(
    records: Sequence[Mapping[str, Any]], programs: Sequence[str]
) -> dict[str, bool]:
    """Within each group of jobs that train the same steps, raw, raw again and switchyard must
    end bit-identical rank by rank (else :class:`JobFailed`); returns, per program, whether it
    matched raw in every group."""
    # (group, loop family) -> {(rank, digest)}
    found: dict[tuple[str, str], set[tuple[int, str]]] = {}
    for job in records:
        for rank in job["ranks"]:
            for label, digest in rank["digests"].items():
                family = "raw" if label.startswith("raw") else label
                found.setdefault((job["group"], family), set()).add((rank["rank"], digest))
    groups = sorted({group for group, _ in found})
    for (group, family), digests in found.items():
        if family in ("raw", "switchyard") and len({r for r, _ in digests}) != len(digests):
            raise JobFailed(
                f"in the {group} jobs, the {family} loops ended with different parameters "
                f"({sorted(digests)}): they did not do the same work, so their times cannot be "
                "compared"
            )
    matches = {
        p: all(found[g, p] == found.get((g, "raw")) for g in groups if (g, p) in found)
        for p in programs
    }
    if not matches.get("switchyard", True):
        raise JobFailed(
            "switchyard's final parameters differ from raw's "
            f"({ {k: sorted(v) for k, v in found.items()} }): the loops did not do the same work"
        )
    return matches


def available_pythons(ctx: Context, programs: Sequence[str]) -> dict[str, Path]:
    """The interpreter of each of ``programs`` the context asks for; one whose environment
    cannot be made is left out, with the reason in the log."""
    found: dict[str, Path] = {}
    for program in programs:
        if program not in ctx.programs:
            continue
        try:
            found[program] = ctx.python_for(program)
        except (RuntimeError, ValueError, OSError) as error:
            ctx.log(f"  {program} left out: {error}")
    return found


# -- ddp-throughput ---------------------------------------------------------------------------

DDP_WORKLOAD = Workload()
"""MLP 128-256-256-10, batch 64 per rank: a step of about a millisecond, so that the per-step
cost of the wrapping shows."""


def ddp_plan(quick: bool) -> TrainingPlan:
    """The ``ddp-throughput`` plan; ``quick`` shrinks it to a run of well under a minute."""
    if quick:
        return TrainingPlan(
            scenario="ddp-throughput",
            strategy="ddp",
            workload=dataclasses.replace(DDP_WORKLOAD, warmup_steps=5, blocks=3, block_steps=10),
            paired_rounds=8,
            paired_block_steps=5,
            rounds=1,
            throughput_target=0.99,
            memory_target=None,
        )
    return TrainingPlan(
        scenario="ddp-throughput",
        strategy="ddp",
        workload=DDP_WORKLOAD,
        paired_rounds=200,
        paired_block_steps=10,
        rounds=6,
        throughput_target=0.99,
        memory_target=None,
    )


def run_ddp_throughput(ctx: Context) -> list[Comparison]:
    """Switchyard, Fabric and Accelerate (those asked for whose environment exists) against
    raw PyTorch DDP."""
    pythons = available_pythons(ctx, ("switchyard", "fabric", "accelerate"))
    if not pythons:
        return []
    return measure_training(ctx, ddp_plan(ctx.quick), pythons, Path(sys.executable)).comparisons


# -- ddp-launch -------------------------------------------------------------------------------

LAUNCHERS = {
    "torchrun": ("raw", "torchrun"),
    "switchyard run": ("switchyard", "switchyard-run"),
    "python -m script (runtime.launch)": ("switchyard", "script"),
}
"""Name -> (worker kind, how it is started). ``torchrun`` is the baseline and also runs a
second time per repetition, for the A/A."""


def launch_command(kind: str, how: str, out: Path) -> list[str]:
    worker = ["-m", "benchmarks.workers.launch", "--kind", kind, "--out", str(out)]
    python = sys.executable
    if how == "torchrun":
        return torchrun(Path(python), *worker[1:])
    if how == "switchyard-run":
        return [python, "-m", "switchyard", "run", "--devices", str(NPROC), *worker]
    return [python, *worker]


def _launch_once(command: Sequence[str], folder: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Seconds from just before the command started to each phase on its latest rank, the
    largest rank's peak RSS, and the command's exit."""
    out = folder / "ranks"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    started = time.time()
    code = run_job(command, folder / "job.log", env, out / f"rank{NPROC - 1}.json", 120.0)
    exited = time.time() - started
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    if len(ranks) != NPROC:
        raise JobFailed(f"{len(ranks)} of {NPROC} ranks reported: {' '.join(command)}")
    from benchmarks.workers.launch import PHASES

    record: dict[str, Any] = {
        phase: None if None in (v := [r[phase] for r in ranks]) else max(v) - started
        for phase in PHASES
    }
    record.update(
        exited=exited, exit_code=code, peak_rss_mib=max(r["peak_rss_bytes"] for r in ranks) / MIB
    )
    return record


def _phase_medians(runs: Sequence[Mapping[str, Any]], name: str) -> dict[str, float]:
    """Median seconds from the launch to each phase, for ``name`` and for torchrun, so that
    a difference can be placed (imports, process group, setup...)."""
    from benchmarks.workers.launch import PHASES

    medians = {}
    for who, label in ((name, "program"), ("torchrun", "torchrun")):
        for phase in (*PHASES[2:], "exited"):
            values = [r[who][phase] for r in runs if r[who][phase] is not None]
            if values:
                medians[f"{label} {phase} s"] = summarize(values).median
    return medians


def run_ddp_launch(ctx: Context) -> list[Comparison]:
    """``switchyard run`` and the in-script launcher against torchrun, launch to first step."""
    if "switchyard" not in ctx.programs:
        return []
    repeats = 1 if ctx.quick else 8
    folder = ctx.out_dir / "jobs" / "ddp-launch"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # a bytecode cache the warm-up fills, so that no measured run compiles from source
    env = worker_environment()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")

    def launch(name: str) -> dict[str, Any]:
        kind, how = LAUNCHERS["torchrun" if name == "torchrun (A/A)" else name]
        return _launch_once(launch_command(kind, how, folder / "ranks"), folder, env)

    # the warm-up fills the file-system and bytecode caches: the in-script launcher imports
    # everything the others do; a full run starts each launcher once
    warmup = list(LAUNCHERS)[-1:] if ctx.quick else list(LAUNCHERS)
    ctx.log(f"ddp-launch: warm-up ({', '.join(warmup)})")
    for name in warmup:
        launch(name)
    names = ["torchrun", "torchrun (A/A)", *list(LAUNCHERS)[1:]]
    runs: list[dict[str, dict[str, Any]]] = []
    for number in range(repeats):
        shift = number % len(names)
        order = [*names[shift:], *names[:shift]]
        ctx.log(f"ddp-launch: run {number + 1} of {repeats}: {', '.join(order)}")
        runs.append({name: launch(name) for name in order})
    (folder / "runs.json").write_text(json.dumps(runs, indent=1))
    base = [r["torchrun"]["first_step"] for r in runs]
    again = [r["torchrun (A/A)"]["first_step"] for r in runs]
    base_rss = [r["torchrun"]["peak_rss_mib"] for r in runs]
    again_rss = [r["torchrun (A/A)"]["peak_rss_mib"] for r in runs]
    comparisons = []
    for name in list(LAUNCHERS)[1:]:
        values = [r[name]["first_step"] for r in runs]
        rss = [r[name]["peak_rss_mib"] for r in runs]
        notes = (
            f"{repeats} runs after a warm-up, order rotating; 2-process DDP, MLP "
            f"128-256-256-10; baseline: torchrun running the same training in plain PyTorch; "
            f"records in {folder}"
        )
        comparisons += [
            Comparison(
                scenario="ddp-launch",
                metric=f"launch to first step, {name}",
                unit="s",
                better="lower",
                program="switchyard",
                baseline="raw",
                program_values=tuple(values),
                baseline_values=tuple(base),
                ratios=tuple(paired_ratios(values, base)),
                aa_ratios=tuple(paired_ratios(again, base)),
                target=1.0,
                notes=notes,
                extra=_phase_medians(runs, name),
            ),
            Comparison(
                scenario="ddp-launch",
                metric=f"peak RSS per worker, {name}",
                unit="MiB",
                better="lower",
                program="switchyard",
                baseline="raw",
                program_values=tuple(rss),
                baseline_values=tuple(base_rss),
                ratios=tuple(paired_ratios(rss, base_rss)),
                aa_ratios=tuple(paired_ratios(again_rss, base_rss)),
                target=None,
                notes=notes,
            ),
        ]
    return comparisons


SCENARIOS = (
    Scenario(
        name="ddp-throughput",
        description="2-process DDP training throughput and peak memory against raw torch DDP "
        "(paired blocks in one job, and separate jobs), with the raw-against-raw A/A",
        programs=("raw", "switchyard", "fabric", "accelerate"),
        run=run_ddp_throughput,
    ),
    Scenario(
        name="ddp-launch",
        description="launch to the first completed step of a 2-process DDP job: 'switchyard "
        "run' and runtime.launch() against torchrun",
        programs=("raw", "switchyard"),
        run=run_ddp_launch,
    ),
)
