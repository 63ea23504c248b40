"""Run with torchrun (2 processes): fsdp_checkpoint_checks.py OUT SMALL RO

What a script ported from plain PyTorch saves under FSDP (a ``model.state_dict()`` of DTensor
shards in a plain dict), and how sharded saves fail. OUT receives the checkpoints and
``report.json`` (written by rank 0, with every rank's errors); SMALL is a small tmpfs (or ``-``)
to fill, RO a read-only one holding a directory ``ckpt`` (or ``-``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from fsdp_common import Net
from torch.distributed.tensor import Shard, distribute_tensor

from switchyard import Runtime
from switchyard.errors import CheckpointError


def trained(runtime: Runtime, seed: int) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = runtime.setup(model, optimizer)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(seed))
    runtime.backward(model(x).pow(2).mean())
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer


def full(runtime: Runtime, model: Any) -> dict[str, torch.Tensor]:
    return runtime.strategy.full_state_dict(model)  # type: ignore[attr-defined]


def failure(action: Any) -> str | None:
    try:
        action()
    except CheckpointError as error:
        return str(error)
    return None


def main(out: Path, small: str, read_only: str) -> None:
    runtime = Runtime(accelerator="cpu", strategy="fsdp", devices=2)
    runtime.launch()
    report: dict[str, Any] = {"world_size": runtime.world_size}
    model, _ = trained(runtime, seed=1)
    reference = full(runtime, model)
    if runtime.global_rank == 0:
        torch.save(reference, out / "reference.pt")

    # a plain dict of DTensor shards, as a ported script passes it
    runtime.save(out / "plain", {"model": model.state_dict(), "step": 5})
    # ... loaded back in place into another model's DTensors
    other, _ = trained(runtime, seed=2)
    before = full(runtime, other)
    state: dict[str, Any] = {"model": other.state_dict(), "step": 0}
    runtime.load(out / "plain", state)
    after = full(runtime, other)
    if runtime.global_rank == 0:
        report["differed_before"] = any(not torch.equal(before[k], reference[k]) for k in before)
        report["in_place_max_diff"] = max(
            float((after[k] - reference[k]).abs().max()) for k in reference
        )
        report["in_place_step"] = state["step"]

    # state_dict_type="full": DTensors in a plain dict are gathered into the one file
    runtime.strategy.state_dict_type = "full"  # type: ignore[attr-defined]
    runtime.save(out / "full_plain.pt", {"model": model.state_dict(), "step": 5})
    runtime.strategy.state_dict_type = "sharded"  # type: ignore[attr-defined]

    # a file system that fills up in the middle of a sharded save
    if small != "-":
        runtime.save(Path(small) / "ckpt", {"model": model, "step": 1})
        mesh = runtime.strategy.mesh  # type: ignore[attr-defined]
        big = distribute_tensor(torch.zeros(2 * 1024 * 1024), mesh, [Shard(0)])  # 8 MiB
        report[f"disk_full_{runtime.global_rank}"] = failure(
            lambda: runtime.save(
                Path(small) / "ckpt", {"model": model, "big": {"w": big}, "step": 2}
            )
        )
        runtime.barrier()
    # a read-only file system
    if read_only != "-":
        report[f"read_only_{runtime.global_rank}"] = failure(
            lambda: runtime.save(Path(read_only) / "ckpt", {"model": model, "step": 3})
        )
    # every rank's errors, gathered on rank 0
    errors = {k: v for k, v in report.items() if k.startswith(("disk_full_", "read_only_"))}
    gathered: list[Any] = [None] * runtime.world_size
    torch.distributed.all_gather_object(gathered, errors)
    if runtime.global_rank == 0:
        for part in gathered:
            report.update(part)
        (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
