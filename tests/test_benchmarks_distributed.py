"""The distributed benchmark scenarios (benchmarks/distributed.py, benchmarks/sharded.py) run for
real on 2 CPU processes over gloo: a quick ``ddp-throughput`` run yields complete comparisons
whose loops ended bit-identical, a launch job reports its phases in order, and the DeepSpeed
scenario skips, saying why, where its environment is absent. No time is asserted on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch.distributed

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the benchmarks are a top-level folder, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import distributed, sharded  # noqa: E402
from benchmarks.results import Context  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)


def context(tmp_path: Path) -> Context:
    return Context(
        quick=True,
        programs=frozenset({"raw", "switchyard"}),
        out_dir=tmp_path / "run",
        log_file=tmp_path / "log.txt",
    )


@pytest.mark.distributed
@pytest.mark.slow
def test_quick_ddp_throughput_compares_bit_identical_loops(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    plan = distributed.ddp_plan(quick=True)
    run = distributed.measure_training(
        ctx, plan, {"switchyard": Path(sys.executable)}, Path(sys.executable)
    )

    assert run.digests_match == {"switchyard": True}
    # every job's loops, raw / raw again / switchyard, ended with the same parameters per rank
    for job in run.jobs:
        for rank in job["ranks"]:
            assert len(set(rank["digests"].values())) == 1, (job["name"], rank["digests"])
    assert [job["loops"] for job in run.jobs] == [
        ["raw", "raw-again", "switchyard"],
        ["raw"],
        ["raw"],
        ["switchyard"],
    ]
    metrics = {c.metric: c for c in run.comparisons}
    assert set(metrics) == {
        "throughput, paired blocks",
        "throughput, separate jobs",
        "peak RSS",
        "tensor memory allocated",
    }
    paired = metrics["throughput, paired blocks"]
    assert len(paired.ratios) == len(paired.aa_ratios) == plan.paired_rounds
    for got, program, baseline in zip(
        paired.ratios, paired.program_values, paired.baseline_values, strict=True
    ):
        assert got == pytest.approx(program / baseline)
    assert all(value > 0 for value in paired.program_values + paired.baseline_values)
    assert metrics["peak RSS"].program_values[0] > 50  # MiB: a process that imported torch
    assert (paired.target, paired.better) == (0.99, "higher")
    assert "bit-identical" in paired.notes


def test_digest_check_refuses_loops_that_did_different_work() -> None:
    def job(group: str, **digests: str) -> dict[str, object]:
        return {"group": group, "ranks": [{"rank": 0, "digests": digests}]}

    same = [job("paired", raw="a", **{"raw-again": "a"}, switchyard="a"), job("separate", raw="b")]
    assert distributed._check_digests(same, ["switchyard"]) == {"switchyard": True}
    differing = [job("paired", raw="a", **{"raw-again": "a"}, switchyard="c")]
    with pytest.raises(distributed.JobFailed, match="did not do the same work"):
        distributed._check_digests(differing, ["switchyard"])
    # another library's data order may differ: reported, not refused
    fabric = [job("paired", raw="a", fabric="d")]
    assert distributed._check_digests(fabric, ["fabric"]) == {"fabric": False}


@pytest.mark.distributed
def test_a_launch_job_reports_every_phase_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "launch"
    folder.mkdir()
    command = distributed.launch_command("raw", "torchrun", folder / "ranks")
    record = distributed._launch_once(command, folder, distributed.worker_environment())
    from benchmarks.workers.launch import PHASES

    times = [record[phase] for phase in PHASES if record[phase] is not None]
    assert times == sorted(times)
    assert 0 < record["first_step"] <= record["exited"]
    assert record["peak_rss_mib"] > 50


def test_deepspeed_scenario_skips_without_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an empty cache: no DeepSpeed environment was built for this checkout there
    monkeypatch.setenv("SWITCHYARD_CACHE", str(tmp_path / "cache"))
    ctx = context(tmp_path)
    (scenario,) = [s for s in sharded.SCENARIOS if s.name == "deepspeed"]

    assert scenario.run(ctx) == []
    log = (tmp_path / "log.txt").read_text()
    assert "deepspeed: skipped: no DeepSpeed environment" in log
    assert "scripts/engine-env deepspeed" in log
