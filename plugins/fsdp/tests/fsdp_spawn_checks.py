"""Run as a plain script: fsdp_spawn_checks.py OUT_JSON

runtime.launch(fn) with strategy "fsdp_spawn" and precision "bf16-mixed" on 2 processes: the
mixed precision policy (bfloat16 parameters inside forward, float32 shards and gradients),
no_backward_sync, and the global gradient norm used for clipping.
"""

from __future__ import annotations

import sys

import torch
from fsdp_common import write_report
from torch import nn
from torch.distributed.tensor import DTensor

from switchyard import Runtime


class Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 2)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.fc1.weight.dtype)
        return self.fc2(torch.relu(self.fc1(x)))


def make(runtime: Runtime) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(7)
    model = Probe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return runtime.setup(model, optimizer)


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.full_tensor() for p in model.module.parameters()]


def run(runtime: Runtime) -> dict:
    report: dict = {}
    torch.manual_seed(100 + runtime.global_rank)  # each process its own micro-batches
    x1, x2 = torch.randn(4, 8), torch.randn(4, 8)

    model, _ = make(runtime)
    out = model(x1)
    report["param_dtype_in_forward"] = str(model.module.seen[-1])
    report["output_dtype"] = str(out.dtype)
    # gradient accumulation: the first micro-batch without reduce-scatter
    with runtime.no_backward_sync(model):
        runtime.backward(model(x1).pow(2).mean())
    report["no_grad_shards_inside_no_sync"] = all(p.grad is None for p in model.module.parameters())
    runtime.backward(model(x2).pow(2).mean())
    # after backward every parameter is a float32 shard again, with a float32 gradient
    report["shard_dtypes"] = sorted({str(p.dtype) for p in model.module.parameters()})
    report["grad_dtypes"] = sorted({str(p.grad.dtype) for p in model.module.parameters()})
    accumulated = grads(model)

    reference, _ = make(runtime)
    runtime.backward(reference(x1).pow(2).mean())
    runtime.backward(reference(x2).pow(2).mean())
    expected = grads(reference)
    report["accumulation_max_rel_error"] = max(
        float((a - e).norm() / e.norm()) for a, e in zip(accumulated, expected, strict=True)
    )
    # the norm clipping uses is that of the whole gradient, not of this process's shard
    full_norm = torch.stack([g.norm() for g in expected]).norm()
    local_norm = torch.stack(
        [p.grad.to_local().norm() for p in reference.module.parameters()]
    ).norm()
    _, ref_optimizer = make(runtime)
    ref_optimizer.param_groups[0]["params"] = list(reference.module.parameters())
    total = runtime.clip_gradients(reference, ref_optimizer, max_norm=1e-3)
    report["clip_norm"] = float(total)
    report["full_norm"] = float(full_norm)
    report["local_norm"] = float(local_norm)
    clipped = torch.stack([g.norm() for g in grads(reference)]).norm()
    report["clipped_norm"] = float(clipped)
    report["all_dtensor"] = all(isinstance(p, DTensor) for p in model.module.parameters())
    return report


if __name__ == "__main__":
    runtime = Runtime(accelerator="cpu", strategy="fsdp_spawn", devices=2, precision="bf16-mixed")
    result = runtime.launch(run)
    write_report(sys.argv[1], result)
