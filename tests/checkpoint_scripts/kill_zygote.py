"""The parent of the saving jobs of the SIGKILL suite (tests/test_checkpoint_kills.py).

It imports torch, switchyard and the strategies' modules once, discovers the plugins once, and
then forks each job's processes on request, so that a trial starts in milliseconds instead of an
interpreter start-up per process. It runs no torch operation itself (forking after one could
inherit a thread pool's locks). A job's processes are real processes: a distributed one finds
the variables torchrun would set, creates its process group over gloo, and saves through
``runtime.save`` exactly as a user's script does.

Protocol: one JSON object per line on stdin, one answer per line on stdout.

* ``{"cmd": "start", "strategy", "world", "path", "log", "go", "mode", "port", "inject"}``:
  forks ``world`` processes; answers ``{"pids": [...]}``. Each process trains a small model
  and saves ``{"model", "optimizer", "step", "check"}`` to ``path`` after every step, appending
  ``begin STEP`` to ``log.RANK`` before each save and ``saved STEP SECONDS`` when it returned
  (``tag`` is saved too). After its first save it waits for
  the file ``go`` (so the test can inspect a quiet directory). ``mode`` ``"loop"`` saves until
  killed; ``"once"`` ends after the first save (after ``go``). ``inject`` makes the process kill
  itself with SIGKILL at a named point of the save (``"after_aside"``: right after the old
  checkpoint directory was renamed aside; ``"after_complete"``: right after the new one was
  marked complete).
* ``{"cmd": "reap", "pids": [...]}``: waits (bounded) for them; answers
  ``{"status": {pid: "signal 9" | "exit N" | "running"}}``.
* ``{"cmd": "exit"}``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import time
import traceback
from typing import Any

import torch
from strategies import STRATEGIES, missing, runtime_kwargs

from switchyard import Runtime, checkpoint
from switchyard.registry import default_registry

# stdout is the protocol: DeepSpeed's logger, made at its import, writes to stdout (the
# stderr it is bound to here)
with contextlib.redirect_stdout(sys.stderr):
    for _name, _spec in STRATEGIES.items():
        for _module in () if missing(_name) else _spec["modules"]:
            importlib.import_module(_module)
importlib.import_module("switchyard.sharded")
importlib.import_module("torch._dynamo")  # the first optimizer imports it: 2 s per job otherwise
default_registry()  # plugin discovery, once, inherited by every job

GO_TIMEOUT = 120.0


def _model() -> Any:
    from torch import nn

    torch.manual_seed(0)
    # about 1.1 MB of parameters, 3.4 MB with AdamW's state: a save takes long enough to be
    # killed in the middle of
    return nn.Sequential(nn.Linear(256, 512), nn.Tanh(), nn.Linear(512, 256))


def _check(runtime: Runtime, model: Any, optimizer: Any) -> list[float]:
    """Sums of the parameters and of the first moments, over the full tensors: stored with each
    checkpoint, recomputed from the loaded one, they prove that it is one consistent save."""
    if type(runtime.strategy).__module__.startswith("switchyard_deepspeed"):
        return _deepspeed_check(model)
    from torch.distributed.tensor import DTensor

    def full(t: Any) -> Any:
        return t.full_tensor() if isinstance(t, DTensor) else t

    params = [full(p.detach()).double().sum() for p in model.parameters()]
    moments = [
        full(optimizer.state[p]["exp_avg"]).double().sum()
        for p in model.parameters()
        if p in optimizer.state
    ]
    return [float(sum(params)), float(sum(moments))]


def _deepspeed_check(model: Any) -> list[float]:
    """The parameters' sum only: ``checkpoint.load`` leaves DeepSpeed's flat optimizer shards
    out. Under ZeRO-3 each process holds a shard of every parameter: gathered (collectively)."""
    import deepspeed

    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params):
        return [float(sum(p.detach().double().sum() for p in params))]


def _inject(point: str) -> None:
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        real(src, dst)
        src_name, dst_name = os.path.basename(src), os.path.basename(dst)
        if (point == "after_aside" and ".old-" in dst_name) or (
            point == "after_complete" and ".new-" in dst_name and ".tmp-" in src_name
        ):
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.os.replace = replace  # type: ignore[assignment]


def _job(spec: dict[str, Any], rank: int) -> None:
    world = spec["world"]
    if world > 1:
        os.environ.update(
            {
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": str(world),
                "GROUP_RANK": "0",
                "GROUP_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(spec["port"]),
            }
        )
    torch.set_num_threads(1)
    runtime = Runtime(**runtime_kwargs(spec["strategy"]))
    runtime.launch()
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = runtime.setup(model, optimizer)
    if spec.get("inject"):
        _inject(spec["inject"])
    log = os.open(f"{spec['log']}.{rank}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    generator = torch.Generator().manual_seed(1)
    step = 0
    while True:
        step += 1
        x = torch.randn(8, 256, generator=generator)
        runtime.backward(model(x).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
        check = _check(runtime, model, optimizer)
        os.write(log, f"begin {step}\n".encode())
        start = time.perf_counter()
        state = {"model": model, "optimizer": optimizer, "step": step, "check": check}
        runtime.save(spec["path"], {**state, "tag": spec.get("tag", "")})
        os.write(log, f"saved {step} {time.perf_counter() - start:.6f}\n".encode())
        if step == 1:
            deadline = time.monotonic() + GO_TIMEOUT
            while not os.path.exists(spec["go"]):
                if time.monotonic() > deadline:
                    os._exit(3)
                time.sleep(0.002)
            if spec["mode"] == "once":
                runtime.barrier()
                os._exit(0)


def _start(spec: dict[str, Any]) -> list[int]:
    pids = []
    for rank in range(spec["world"]):
        pid = os.fork()
        if pid == 0:  # the job's process
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                err = os.open(
                    f"{spec['log']}.{rank}.err", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
                )
                os.dup2(err, 2)
                _job(spec, rank)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
    return pids


def _reap(pids: list[int], timeout: float = 60.0) -> dict[int, str]:
    status: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status[pid] = (
                    f"signal {os.WTERMSIG(code)}"
                    if os.WIFSIGNALED(code)
                    else f"exit {os.WEXITSTATUS(code)}"
                )
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status[pid] = "running"
                break
            time.sleep(0.005)
    return status


def main() -> None:
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "start":
            answer: dict[str, Any] = {"pids": _start(request)}
        elif request["cmd"] == "reap":
            answer = {"status": _reap(request["pids"])}
        else:
            break
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
