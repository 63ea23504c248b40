"""DDP for real: two processes on the CPU talking over gloo, started every supported way."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from switchyard.testing.subprocesses import child_environment

SCRIPTS = Path(__file__).parent / "scripts"
PARITY = SCRIPTS / "parity.py"
TIMEOUT = 120

pytestmark = pytest.mark.distributed


def clean_env() -> dict[str, str]:
    """The test's environment without variables that would make a child think it is already
    part of a distributed job; a hung or aborted process leaves its stacks in the output."""
    return child_environment({"PYTHONFAULTHANDLER": "1"})


def _signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``'s descendants, deepest first, then to ``pid``."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        children = []
    for child in children:
        _signal_tree(int(child), sig)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def run(args: list[str], timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=clean_env(), **kwargs
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reference(steps: int = 20) -> tuple[list[float], list[torch.Tensor], list[torch.Tensor]]:
    """The same training in this one process on the whole batch."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from parity import make_problem  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(SCRIPTS))
    model, x, y = make_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses, after_first = [], None
    for step in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 0:
            after_first = [p.detach().clone() for p in model.parameters()]
    return losses, after_first, [p.detach().clone() for p in model.parameters()]


def check_matches_single_process(result_path: Path) -> dict:
    result = torch.load(result_path, weights_only=True)
    assert result["world_size"] == 2
    assert result["strategy"] == "ddp"
    losses, after_first, final = reference()
    # one step on half-batches with averaged gradients equals one step on the whole batch
    for got, want in zip(result["after_first"], after_first, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # over 20 steps the loss curves agree (each rank's half-batch loss averaged = whole batch)
    assert result["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-6)
    for got, want in zip(result["final"], final, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert losses[-1] < losses[0]
    return result


def test_switchyard_run_two_devices_matches_single_process(tmp_path):
    out = tmp_path / "result.pt"
    proc = run([sys.executable, "-m", "switchyard", "run", "--devices", "2", str(PARITY), str(out)])
    assert proc.returncode == 0, proc.stderr
    check_matches_single_process(out)


def test_torchrun_launch_is_picked_up_without_changes(tmp_path):
    out = tmp_path / "result.pt"
    proc = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(PARITY),
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    result = check_matches_single_process(out)
    assert result["environment"] != "local" or "TORCHELASTIC_RUN_ID" not in os.environ


def test_plain_python_relaunches_the_script(tmp_path):
    out = tmp_path / "result.pt"
    args = json.dumps({"accelerator": "cpu", "strategy": "ddp", "devices": 2})
    proc = run([sys.executable, str(PARITY), str(out), "--runtime-args", args])
    assert proc.returncode == 0, proc.stderr
    check_matches_single_process(out)


def test_two_nodes_on_localhost_form_one_job(tmp_path):
    out = tmp_path / "result.pt"
    port = str(free_port())
    common = [
        sys.executable,
        "-m",
        "switchyard",
        "run",
        "--devices",
        "1",
        "--num-nodes",
        "2",
        "--main-address",
        "127.0.0.1",
        "--main-port",
        port,
    ]
    env = clean_env()
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = []
    for rank, log in zip((0, 1), logs, strict=True):
        with log.open("w") as handle:
            nodes.append(
                subprocess.Popen(
                    [*common, "--node-rank", str(rank), str(PARITY), str(out)],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                )
            )
    deadline = time.monotonic() + TIMEOUT
    timed_out = False
    try:
        for node in nodes:
            node.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        # every Python process below dumps its stacks (PYTHONFAULTHANDLER) into the logs
        for node in nodes:
            _signal_tree(node.pid, signal.SIGABRT)
        time.sleep(2)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    reports = "\n".join(f"--- node {rank} ---\n{log.read_text()}" for rank, log in enumerate(logs))
    assert not timed_out, f"the 2-node job did not finish in {TIMEOUT}s:\n{reports}"
    assert [node.returncode for node in nodes] == [0, 0], reports
    check_matches_single_process(out)


def test_a_failing_rank_ends_the_job_quickly_and_is_named(tmp_path):
    out = tmp_path / "result.pt"
    start = time.monotonic()
    proc = run(
        [
            sys.executable,
            "-m",
            "switchyard",
            "run",
            "--devices",
            "2",
            str(PARITY),
            str(out),
            "--fail-at-step",
            "3",
            "--fail-rank",
            "1",
        ],
        timeout=90,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr  # an uncaught exception's status
    assert elapsed < 60, f"the job took {elapsed:.0f}s to end"
    assert "deliberate failure at step 3" in proc.stderr
    assert "rank 1" in proc.stderr
    assert not out.exists()


def test_busy_main_port_is_a_clear_error(tmp_path):
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run(
            [
                sys.executable,
                "-m",
                "switchyard",
                "run",
                "--devices",
                "2",
                "--main-port",
                str(port),
                str(PARITY),
                str(tmp_path / "r.pt"),
            ],
            timeout=60,
        )
    assert proc.returncode != 0
    assert f"main port {port}" in proc.stderr
    assert "already in use" in proc.stderr


def test_process_count_mismatch_is_a_clear_error(tmp_path):
    args = json.dumps({"devices": 3})
    proc = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(PARITY),
            str(tmp_path / "r.pt"),
            "--runtime-args",
            args,
        ]
    )
    assert proc.returncode != 0
    # said before any process group forms, by the environment check or the strategy's own
    assert (
        "torchrun started 2 process(es)" in proc.stderr and "devices=3" in proc.stderr
    ) or "2 processes were started, but the runtime expects 3" in proc.stderr


def test_spawned_processes_collectives_sampler_no_sync_and_checkpoint(tmp_path):
    out = tmp_path / "seen.pt"
    proc = run([sys.executable, str(SCRIPTS / "collectives.py"), str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "launch returned {'returned_by': 0}" in proc.stdout
    # print() runs on rank zero only
    assert proc.stdout.count("printed by rank") == 1
    assert "printed by rank 0" in proc.stdout
    seen = torch.load(out, weights_only=False)
    assert seen["world_size"] == 2
    torch.testing.assert_close(seen["sum"], torch.tensor([3.0, 30.0]))
    torch.testing.assert_close(seen["mean"], torch.tensor([1.5, 15.0]))
    torch.testing.assert_close(seen["max"], torch.tensor([2.0, 20.0]))
    torch.testing.assert_close(seen["min"], torch.tensor([1.0, 10.0]))
    # gather keeps the structure, stacks in rank order
    torch.testing.assert_close(seen["nested"]["a"], torch.tensor([[0, 0], [1, 1]]))
    torch.testing.assert_close(seen["nested"]["b"][0], torch.tensor([0.0, 2.0]))
    assert seen["broadcast"] == {"from": 1, "list": [1, 1, 1]}
    # each rank saw a different half of the data, together all of it, in a new order each epoch
    items = seen["epoch_items"]  # [rank, epoch, item]
    assert seen["sampler_is_distributed"]
    for epoch in range(2):
        together = torch.cat([items[0, epoch], items[1, epoch]]).sort().values
        torch.testing.assert_close(together, torch.arange(20.0))
    assert not torch.equal(items[0, 0], items[0, 1])
    # inside no_backward_sync each rank keeps its own gradient; outside they are averaged
    unsynced, synced = seen["grad_unsynced"], seen["grad_synced"]
    assert not torch.equal(unsynced[0], unsynced[1])
    torch.testing.assert_close(synced[0], synced[1])
    torch.testing.assert_close(synced[0], (unsynced[0] + unsynced[1]) / 2)
    torch.testing.assert_close(seen["loaded_step"], torch.tensor([7, 7]))
    assert (tmp_path / "seen.pt.ckpt").is_file()


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_signal_to_the_launcher_ends_every_worker(tmp_path, signal_name):
    import signal as signals

    marker = tmp_path / "pid"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "switchyard",
            "run",
            "--devices",
            "2",
            str(SCRIPTS / "wait_forever.py"),
            str(marker),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        pids_files = [Path(f"{marker}.{rank}") for rank in (0, 1)]
        while not all(p.exists() and p.read_text() for p in pids_files):
            assert launcher.poll() is None, launcher.stderr.read()
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
        workers = [int(p.read_text()) for p in pids_files]
        launcher.send_signal(getattr(signals, signal_name))
        launcher.wait(timeout=60)
        assert launcher.returncode == 128 + getattr(signals, signal_name)
        deadline = time.monotonic() + 30
        alive = workers
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if _running(pid)]
            time.sleep(0.2)
        assert not alive, f"workers {alive} outlived the launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited; only its parent has not collected it yet
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_ddp_options_reach_distributed_data_parallel(monkeypatch):
    """One process: DDP runs in place with a process group of one, no launcher."""
    from torch.nn.parallel import DistributedDataParallel

    from switchyard import Runtime
    from switchyard_ddp import DDPStrategy

    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    strategy = DDPStrategy(
        find_unused_parameters=True, bucket_cap_mb=1, gradient_as_bucket_view=True
    )
    runtime = Runtime(accelerator="cpu", strategy=strategy, devices=1)
    assert strategy.launcher is None
    runtime.launch()
    try:
        model = runtime.setup(nn.Linear(2, 2))
        wrapped = model._forward_module
        assert isinstance(wrapped, DistributedDataParallel)
        assert wrapped.find_unused_parameters is True
        assert wrapped.gradient_as_bucket_view is True
        assert wrapped.bucket_bytes_cap == 1024 * 1024
        assert torch.distributed.get_backend() == "gloo"
    finally:
        runtime.teardown()
    assert not torch.distributed.is_initialized()


def test_unknown_start_method_is_refused():
    from switchyard import SelectionError
    from switchyard_ddp import DDPStrategy

    with pytest.raises(SelectionError, match="start_method='thread'"):
        DDPStrategy(start_method="thread")  # type: ignore[arg-type]
