"""The rendezvous port of a single-node job cannot be lost between its choice and its use.

A port found free is free only for a moment: while the processes of a job import torch, another
program (or another test) can take it, and rank 0 then fails with EADDRINUSE. Here the port the
environment chooses is taken on purpose before the job starts, and held.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from switchyard.testing.subprocesses import child_environment
from switchyard.testing.subprocesses import run as run_child

SCRIPT = Path(__file__).parent / "scripts" / "taken_port.py"

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize(("how", "world_size"), [("inprocess", 1), ("spawn", 2), ("fork", 2)])
def test_a_port_taken_after_it_was_found_free_does_not_fail_the_job(tmp_path, how, world_size):
    out = tmp_path / "out"
    job = run_child(
        [sys.executable, str(SCRIPT), how, str(out)], timeout=120, log=tmp_path / "job.log"
    )
    assert not job.timed_out, job.output
    assert job.returncode == 0, job.output
    total, _taken = out.read_text().split()
    # every rank joined, through a store bound on a port other than the taken one
    assert int(total) == world_size


def test_a_master_port_held_by_another_program_is_named(tmp_path):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    script = tmp_path / "job.py"
    script.write_text(
        "from switchyard import Runtime\n"
        "Runtime(accelerator='cpu', strategy='ddp_spawn', devices=2).launch(print)\n"
    )
    try:
        job = run_child(
            [sys.executable, str(script)],
            timeout=120,
            log=tmp_path / "job.log",
            env=child_environment({"MASTER_PORT": str(port)}),
        )
    finally:
        holder.close()
    assert job.returncode != 0
    assert f"127.0.0.1:{port}" in job.output
    assert "Another program holds that port" in job.output
    assert "Traceback" in job.output  # a SelectionError, raised in the launching process
