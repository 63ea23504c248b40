"""Several runtimes, one after another, in the same processes of one ``switchyard run`` job.

torchrun's agent holds one rendezvous store for the whole job. Each new process group publishes
its ranks' addresses there; a second group reading the first one's keys before its peer
overwrote them connected to a closed port (gloo's "Connection refused"), about one job in two.
Every group a process makes now has keys of its own.
"""

from __future__ import annotations

import sys

import pytest
import torch

from switchyard import Runtime
from switchyard.testing.subprocesses import child_environment, run

RUNTIMES = 4


def main() -> None:
    for generation in range(RUNTIMES):
        runtime = Runtime(accelerator="cpu", strategy="ddp", timeout=30)
        runtime.launch()
        total = runtime.all_reduce(torch.tensor(float(runtime.global_rank + generation)), "sum")
        runtime.print(f"RESULT {generation} {total.item():g}")
        runtime.teardown()


@pytest.mark.distributed
def test_runtimes_made_one_after_another_each_form_their_process_group(tmp_path):
    command = [sys.executable, "-m", "switchyard", "run", "--accelerator", "cpu", "--devices"]
    command += ["2", __file__]
    finished = run(
        command, timeout=120, log=tmp_path / "log", env=child_environment({"OMP_NUM_THREADS": "1"})
    )
    assert finished.returncode == 0, f"{finished.describe()}:\n{finished.output[-4000:]}"
    results = [line for line in finished.output.splitlines() if line.startswith("RESULT ")]
    # ranks 0 and 1 add up to 1, plus the generation on each rank
    assert results == [f"RESULT {g} {1 + 2 * g}" for g in range(RUNTIMES)]


if __name__ == "__main__":
    main()
