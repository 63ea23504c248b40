"""A 2-process job that fails the way its arguments say, for the hang and orphan suite
(tests/test_failures.py).

Usage: failures.py OUT ACTION STRATEGY TIMEOUT, where ACTION is
  raise    rank 1 raises at step 3;
  sigkill  rank 1 kills itself with SIGKILL at step 3;
  stall    rank 1 sleeps for an hour at step 3, while rank 0 goes on into the next step's
           collectives;
  stall-at-end  rank 1 sleeps for an hour after step 5, while rank 0 ends its run (and waits
           at the end-of-run barrier);
  hold     every rank trains on for ever (the test kills the launcher).

Each process writes OUT/pid.<rank> when it starts training, OUT/ready.<rank> after three steps,
and the rank that fails writes OUT/fault with the time (time.time()) just before it does. The
strategy is the name of any distributed strategy; one that starts processes with
torch.multiprocessing gets runtime.launch(main), the others runtime.launch() in place.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

from switchyard import Runtime


def main(runtime: Runtime, out: Path, action: str) -> None:
    rank = runtime.global_rank
    (out / f"pid.{rank}").write_text(str(os.getpid()))
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer = runtime.setup(model, optimizer)
    step = 0
    while True:
        if step == 3:
            (out / f"ready.{rank}").write_text("ready")
            if rank == 1 and action in ("raise", "sigkill", "stall"):
                (out / "fault").write_text(repr(time.time()))
                if action == "raise":
                    raise RuntimeError("deliberate failure of rank 1")
                if action == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(3600)
        x = torch.randn(4, 8, device=runtime.device)
        loss = model(x).pow(2).mean()
        runtime.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        runtime.all_reduce(loss.detach())
        step += 1
        if action == "stall-at-end" and step == 5:
            if rank == 1:
                (out / "fault").write_text(repr(time.time()))
                time.sleep(3600)
            return
        if action == "hold" and step > 3:
            time.sleep(0.05)
        if step > 10_000:
            raise RuntimeError("the job should have ended long ago")


if __name__ == "__main__":
    out, action, strategy, timeout = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    runtime = Runtime(accelerator="cpu", strategy=strategy, devices=2, timeout=float(timeout))
    if runtime.strategy.launcher is not None and runtime.strategy.launcher.requires_function:
        runtime.launch(main, out, action)
    else:
        runtime.launch()
        main(runtime, out, action)
