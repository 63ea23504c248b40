"""The multi-process half of the strategy checks: what every process of the job runs.

The kit starts it the way a user starts training, so the strategy's own launcher creates the
processes::

    python -m switchyard run --accelerator A --strategy S --devices N --precision 32-true \\
        -m switchyard.testing.worker OUT

Each process runs every check in :data:`CHECKS` in the same order (collectives must be called
by all ranks together), and records what it observed, not a verdict, in ``OUT/rank<R>.pt``
(``torch.save``, readable with ``weights_only=True``). The file is rewritten after each check,
so a job that hangs still tells which checks finished and which one it was running. The
assertions, and their tolerances, are in :mod:`switchyard.testing.suite.strategy`.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from switchyard.checkpoint import atomic_save
from switchyard.runtime import Runtime
from switchyard.strategy import REDUCE_OPS
from switchyard.testing import problems
from switchyard.testing.compare import flatten_state, full_tensor, state_difference

BARRIER_DELAY = 0.5
"""Seconds the last rank waits before entering the barrier; no rank may leave it sooner."""


def reduce_input(rank: int) -> list[float]:
    """What rank ``rank`` contributes to ``all_reduce``; the negative component makes ``max`` and
    ``min`` pick different ranks."""
    return [rank + 1.0, 10.0 * (rank + 1), -(rank + 1.0)]


def check_processes(runtime: Runtime, out: Path) -> dict[str, Any]:
    device = runtime.device
    return {
        "global_rank": runtime.global_rank,
        "local_rank": runtime.local_rank,
        "node_rank": runtime.node_rank,
        "world_size": runtime.world_size,
        "pid": os.getpid(),
        "host": platform.node(),
        "device": str(device),
        "device_name": runtime.accelerator.device_name(device),
        "names": dict(runtime.plan.names),
    }


def check_all_reduce(op: str, runtime: Runtime, out: Path) -> dict[str, Any]:
    value = torch.tensor(reduce_input(runtime.global_rank), device=runtime.device)
    result = runtime.all_reduce(value, op=op)
    data: dict[str, Any] = {"result": full_tensor(result)}
    if op == "sum":
        integers = torch.tensor([runtime.global_rank + 1, 2], device=runtime.device)
        data["integer_result"] = full_tensor(runtime.all_reduce(integers, op="sum"))
    return data


def check_all_gather(runtime: Runtime, out: Path) -> dict[str, Any]:
    rank = runtime.global_rank
    block = torch.arange(6, dtype=torch.float32, device=runtime.device).reshape(2, 3) + 100 * rank
    scalar = torch.tensor(float(rank), device=runtime.device)
    return {
        "block": full_tensor(runtime.all_gather(block)),
        "scalar": full_tensor(runtime.all_gather(scalar)),
    }


def check_broadcast(runtime: Runtime, out: Path) -> dict[str, Any]:
    rank = runtime.global_rank
    source = runtime.world_size - 1
    mine = {"from": rank, "payload": [rank] * 3, "text": f"rank {rank}"}
    return {
        "source": source,
        "received": runtime.broadcast(mine, src=source),
        "received_from_zero": runtime.broadcast(dict(mine), src=0),
    }


def check_barrier(runtime: Runtime, out: Path) -> dict[str, Any]:
    marker = out / "barrier.marker"
    if runtime.global_rank == runtime.world_size - 1:
        if runtime.world_size > 1:
            time.sleep(BARRIER_DELAY)
        marker.write_text("entered")
    start = time.monotonic()
    runtime.barrier("switchyard-conformance")
    return {"marker_seen": marker.exists(), "waited": time.monotonic() - start}


def _step(runtime: Runtime, model: Any, optimizer: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    runtime.backward(loss, model=model)
    optimizer.step()
    return float(loss.item())


def optimizer_record(
    names: dict[int, str], wrapped: Any, wrapped_optimizer: Any, optimizer: Any
) -> dict[str, Any]:
    """How the optimizer created before ``runtime.setup`` relates to the set-up module: the
    names of the parameters it still holds that the module held before setup but no longer
    does (``stale``), and how many of its parameters the module does not hold, and the reverse.
    ``names`` maps ``id`` to name for the module's parameters before setup, which the caller
    keeps alive."""
    held = {id(p) for p in wrapped.parameters()}
    stepped = [p for group in wrapped_optimizer.param_groups for p in group["params"]]
    ids = {id(p) for p in stepped}
    return {
        "stale": sorted(names[id(p)] for p in stepped if id(p) in names and id(p) not in held),
        "not_held": len(ids - held),
        "not_stepped": len(held - ids),
        "optimizer_parameters": len(ids),
        "module_parameters": len(held),
        "users_optimizer": wrapped_optimizer.optimizer is optimizer,
    }


def check_training(runtime: Runtime, out: Path) -> dict[str, Any]:
    model = problems.regression_model()
    originals = list(model.parameters())  # kept alive: their ids name them until the end
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(originals, lr=problems.LEARNING_RATE)
    wrapped, wrapped_optimizer = runtime.setup(model, optimizer)
    parameters = optimizer_record(names, wrapped, wrapped_optimizer, optimizer)
    parameters["master_copies"] = type(runtime.strategy).optimizer_steps_master_copies
    x, y = problems.regression_batch(runtime.world_size)
    x = problems.shard(x, runtime.global_rank).to(runtime.device)
    y = problems.shard(y, runtime.global_rank).to(runtime.device)
    before = flatten_state(runtime.strategy.module_state_dict(wrapped.module))
    losses = [_step(runtime, wrapped, wrapped_optimizer, x, y) for _ in range(problems.STEPS)]
    state = flatten_state(runtime.strategy.module_state_dict(wrapped.module))
    # what the steps left as it was: an optimizer stepping tensors the module does not read
    parameters["unchanged"] = sorted(
        key
        for key, value in before.items()
        if key in state and key in names.values() and torch.equal(value, state[key])
    )
    del originals
    return {"losses": losses, "state": state, "optimizer": parameters}


def _gradients(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {
        name: None if p.grad is None else full_tensor(p.grad)
        for name, p in module.named_parameters()
    }


def check_no_backward_sync(runtime: Runtime, out: Path) -> dict[str, Any]:
    model = problems.sync_model()
    reference = copy.deepcopy(model)
    x = problems.sync_input(runtime.global_rank)
    reference(x).sum().backward()
    # with an optimizer, as engines that own it (ZeRO) need; its one step shows the gradients
    # a strategy keeps to itself
    lr = problems.SYNC_LEARNING_RATE
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    wrapped, wrapped_optimizer = runtime.setup(model, optimizer)
    x = x.to(runtime.device)
    with runtime.no_backward_sync(wrapped):
        runtime.backward(wrapped(x).sum(), model=wrapped)
    inside = _gradients(wrapped.module)
    runtime.backward(wrapped(x).sum(), model=wrapped)
    after = _gradients(wrapped.module)
    before = flatten_state(runtime.strategy.module_state_dict(wrapped.module))
    wrapped_optimizer.step()
    stepped = flatten_state(runtime.strategy.module_state_dict(wrapped.module))
    step_gradients = {
        name: (before[name].double() - stepped[name].double()) / lr
        for name in after
        if name in before and name in stepped
    }
    return {
        "local": _gradients(reference),
        "inside": inside,
        "after": after,
        "step_gradients": step_gradients,
    }


def check_checkpoint(runtime: Runtime, out: Path) -> dict[str, Any]:
    strategy = runtime.strategy
    x, y = problems.regression_batch(runtime.world_size)
    x = problems.shard(x, runtime.global_rank).to(runtime.device)
    y = problems.shard(y, runtime.global_rank).to(runtime.device)

    def trained(seed: int) -> tuple[Any, Any]:
        model = problems.regression_model(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        wrapped, wrapped_optimizer = runtime.setup(model, optimizer)
        for _ in range(2):
            _step(runtime, wrapped, wrapped_optimizer, x, y)
        return wrapped, wrapped_optimizer

    model, optimizer = trained(seed=1)
    path = out / "checkpoint"
    runtime.save(path, {"model": model, "optimizer": optimizer, "step": 2, "note": "kit"})
    saved_model = flatten_state(strategy.module_state_dict(model.module))
    saved_optimizer = flatten_state(strategy.optimizer_state_dict(optimizer.optimizer))

    # a different model, trained differently, so that loading has everything to overwrite
    other, other_optimizer = trained(seed=2)
    before = flatten_state(strategy.module_state_dict(other.module))
    state: dict[str, Any] = {"model": other, "optimizer": other_optimizer, "step": 0, "note": ""}
    runtime.load(path, state)
    return {
        "saved_model": saved_model,
        "saved_optimizer": saved_optimizer,
        "restored_model": flatten_state(strategy.module_state_dict(other.module)),
        "restored_optimizer": flatten_state(
            strategy.optimizer_state_dict(other_optimizer.optimizer)
        ),
        "differed_before_load": state_difference(before, saved_model) is not None,
        "step": state["step"],
        "note": state["note"],
    }


Check = Callable[[Runtime, Path], dict[str, Any]]

CHECKS: list[tuple[str, Check]] = [
    ("processes", check_processes),
    *((f"all_reduce_{op}", functools.partial(check_all_reduce, op)) for op in REDUCE_OPS),
    ("all_gather", check_all_gather),
    ("broadcast", check_broadcast),
    ("barrier", check_barrier),
    ("training", check_training),
    ("no_backward_sync", check_no_backward_sync),
    ("checkpoint", check_checkpoint),
]
"""Every check, in the order all processes run them."""


def result_path(out: Path, rank: int) -> Path:
    return out / f"rank{rank}.pt"


def run_checks(runtime: Runtime, out: str) -> None:
    """Run :data:`CHECKS` in this process and record the observations; one failing check is
    recorded with its traceback and the next one runs."""
    folder = Path(out)
    record: dict[str, Any] = {
        "rank": runtime.global_rank,
        "world_size": runtime.world_size,
        "running": None,
        "finished": False,
        "checks": {},
    }
    path = result_path(folder, runtime.global_rank)
    for name, check in CHECKS:
        record["running"] = name
        atomic_save(record, path)
        start = time.monotonic()
        try:
            data = check(runtime, folder)
        except Exception as error:
            record["checks"][name] = {
                "ok": False,
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
                "seconds": time.monotonic() - start,
            }
        else:
            record["checks"][name] = {
                "ok": True,
                "data": data,
                "seconds": time.monotonic() - start,
            }
    record["running"] = None
    record["finished"] = True
    atomic_save(record, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m switchyard.testing.worker",
        description="switchyard conformance kit: the strategy checks, run in each process",
    )
    parser.add_argument("out", help="folder for the per-rank results")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    # every choice comes from `switchyard run` (SWITCHYARD_* variables)
    runtime = Runtime()
    runtime.launch(run_checks, args.out)
    return 0


if __name__ == "__main__":
    # run through the importable module, so that spawned processes can unpickle run_checks
    from switchyard.testing import worker

    sys.exit(worker.main())
