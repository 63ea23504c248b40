"""One job of the crafted-checkpoint suite (tests/test_checkpoint_safety.py), under the strategy
named on the command line, on as many processes as strategies.STRATEGIES gives it (run by
torchrun when more than one).

    checkpoint_job.py STRATEGY OUT generate
        writes OUT/STRATEGY/ckpt (runtime.save of a model, its optimizer and plain values, in
        whatever format the strategy writes), OUT/STRATEGY/reference.pt (the model's full state
        dict, for comparisons), and for strategies that shard OUT/STRATEGY/full.pt
        (state_dict_type="full") and OUT/STRATEGY/plain (a model.state_dict() passed as a plain
        dict); then tries to save a DTensor in a plain value where the strategy writes one file.
    checkpoint_job.py STRATEGY OUT load CASES.json
        loads every case (a checkpoint path) with runtime.load into a fresh model and optimizer
        and records what happened.
    checkpoint_job.py STRATEGY OUT both CASES.json [CONTROL.json]
        generate, then wait (bounded) for the test to write CASES.json from every strategy's
        checkpoints, then load; with CONTROL.json (one process only), afterwards run each payload
        it lists the unsafe way, with SWITCHYARD_MARKER_DIR set: the positive control.

Each process writes OUT/STRATEGY-ACTION.RANK.json (ACTION: generate, load).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from strategies import runtime_kwargs
from torch import nn

from switchyard import Runtime
from switchyard.errors import CheckpointError


def make_model() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 5))


def trained(runtime: Runtime) -> tuple[Any, Any]:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = runtime.setup(model, optimizer)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        x = torch.randn(4, 8, generator=generator)
        loss = model(x).pow(2).mean()
        runtime.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def fresh(runtime: Runtime) -> tuple[Any, Any]:
    torch.manual_seed(99)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 5))
    return runtime.setup(model, torch.optim.AdamW(model.parameters(), lr=1e-2))


def full_state(runtime: Runtime, model: Any) -> dict[str, torch.Tensor]:
    """The model's consolidated state dict (on global rank zero; every process must call it)."""
    gather = getattr(runtime.strategy, "full_state_dict", None)
    if gather is not None:
        return dict(gather(model))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def generate(runtime: Runtime, out: Path, name: str) -> dict[str, Any]:
    model, optimizer = trained(runtime)
    report: dict[str, Any] = {}
    state = {"model": model, "optimizer": optimizer, "step": 3, "sched": {"lr": 0.5}}
    runtime.save(out / "ckpt", state)
    reference = full_state(runtime, model)
    if runtime.global_rank == 0:
        torch.save(reference, out / "reference.pt")
    if hasattr(runtime.strategy, "state_dict_type"):
        runtime.strategy.state_dict_type = "full"
        runtime.save(out / "full.pt", state)
        runtime.strategy.state_dict_type = "sharded"
        # what a script ported from plain PyTorch or Fabric does
        runtime.save(out / "plain", {"model": model.state_dict(), "step": 3})
    if runtime.world_size > 1 and not hasattr(runtime.strategy, "state_dict_type"):
        report["dtensor_refused"] = dtensor_refusal(runtime, out)
        # rank zero cannot write (the folder is a file): every process raises
        try:
            runtime.save(out / "ckpt" / "inside-a-file.pt", {"step": 1})
            report["rank_zero_failure"] = None
        except CheckpointError as error:
            report["rank_zero_failure"] = str(error)
    return report


def dtensor_refusal(runtime: Runtime, out: Path) -> dict[str, Any]:
    """Save a plain value holding a DTensor under a strategy that writes one file."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (runtime.world_size,))
    sharded = distribute_tensor(torch.arange(8.0), mesh, [Shard(0)])
    try:
        runtime.save(out / "dtensor.pt", {"extra": {"weights": sharded}, "step": 1})
    except CheckpointError as error:
        return {"raised": True, "message": str(error), "exists": (out / "dtensor.pt").exists()}
    return {"raised": False, "exists": (out / "dtensor.pt").exists()}


def load(runtime: Runtime, cases: list[dict[str, Any]]) -> dict[str, Any]:
    results = {}
    for case in cases:
        model, optimizer = fresh(runtime)
        objects = {"model": model, "optimizer": optimizer}
        state: dict[str, Any] = {key: objects[key] for key in case.get("keys", objects)}
        result: dict[str, Any]
        try:
            rest = runtime.load(case["path"], state)
            result = {"ok": True, "rest": sorted(rest)}
            full = full_state(runtime, model)
            if runtime.global_rank == 0 and case.get("reference"):
                reference = torch.load(case["reference"], weights_only=True)
                result["max_diff"] = max(
                    float((full[k] - reference[k]).abs().max()) for k in reference
                )
                result["keys_match"] = sorted(full) == sorted(reference)
        except CheckpointError as error:
            result = {"ok": False, "type": "CheckpointError", "message": str(error)}
        except Exception as error:
            result = {
                "ok": False,
                "type": type(error).__name__,
                "message": "".join(traceback.format_exception(error))[-3000:],
            }
        result["marker"] = bool(case.get("marker")) and os.path.exists(case["marker"])
        results[case["name"]] = result
    return results


def wait_for(path: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            sys.exit(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.05)


def control(spec: Path) -> None:
    """Run each payload the unsafe way (after every load of this process is done)."""
    payloads = json.loads(spec.read_text())
    os.environ["SWITCHYARD_MARKER_DIR"] = payloads["markers"]
    for case in payloads["cases"]:
        how, file = case["unsafe"], case["file"]
        try:
            if how == "pickle":
                with open(file, "rb") as handle:
                    pickle.load(handle)
            elif how == "torch":
                torch.load(file, weights_only=False)
            else:
                _, offset, length = how.split(":")
                with open(file, "rb") as handle:
                    handle.seek(int(offset))
                    torch.load(io.BytesIO(handle.read(int(length))), weights_only=False)
        except Exception:  # the payload ran while unpickling; what follows may fail
            pass


def save_report(out: Path, name: str, action: str, runtime: Runtime, report: dict) -> None:
    report["world_size"] = runtime.world_size
    final = out / f"{name}-{action}.{runtime.global_rank}.json"
    partial = final.with_suffix(".partial")
    partial.write_text(json.dumps(report, indent=1))
    os.replace(partial, final)


def main() -> None:
    name, out, action = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    runtime = Runtime(**runtime_kwargs(name))
    runtime.launch()
    torch.set_num_threads(1)
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    if action in ("generate", "both"):
        save_report(out, name, "generate", runtime, generate(runtime, target, name))
    if action in ("load", "both"):
        cases = Path(sys.argv[4])
        wait_for(cases)
        save_report(out, name, "load", runtime, load(runtime, json.loads(cases.read_text())))
    if len(sys.argv) > 5 and runtime.global_rank == 0:
        control(Path(sys.argv[5]))


if __name__ == "__main__":
    main()
