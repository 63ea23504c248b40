"""Run with torchrun: python -m torch.distributed.run --nproc-per-node 2 fsdp_train.py STRATEGY OUT

Trains fsdp_common.Net for STEPS steps and writes OUT/<strategy>.json from rank 0. With
strategy "fsdp" it also saves a sharded checkpoint (twice, the second replacing the first) and a
full export at step SAVE_AT, gathers the parameters there for comparison, and checks
init_module(empty_init=True) and setup_module followed by setup_optimizers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from fsdp_common import SAVE_AT, STEPS, Block, Net, make_loader, make_model, train, write_report
from torch.distributed.tensor import DTensor

from switchyard import Runtime


def main(strategy_name: str, out: Path) -> None:
    report: dict = {}
    if strategy_name == "fsdp":
        from switchyard_fsdp import FSDPStrategy

        strategy = FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block})
    else:
        strategy = strategy_name
    runtime = Runtime(accelerator="cpu", strategy=strategy)
    runtime.launch()
    model = make_model()
    # the four-line flow: the optimizer is created from the unsharded parameters
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    model, optimizer = runtime.setup(model, optimizer)
    loader = runtime.setup_dataloaders(make_loader(runtime.world_size))

    def on_step(step: int) -> None:
        if step == 1:  # set up and trained, nothing saved yet
            report["state_dict_code_imported_by_training"] = (
                "torch.distributed.checkpoint.state_dict" in sys.modules
            )
        state = {"model": model, "optimizer": optimizer, "step": step}
        if step == SAVE_AT // 2:
            runtime.save(out / "sharded", state)  # replaced by the save at SAVE_AT
        if step == SAVE_AT:
            runtime.save(out / "sharded", state)
            runtime.strategy.state_dict_type = "full"
            runtime.save(out / "full.pt", state)
            runtime.strategy.state_dict_type = "sharded"
            gathered = {
                # the names a plain Net has: without the activation-checkpointing wrapper's
                n.replace("_checkpoint_wrapped_module.", ""): p.full_tensor().detach().clone()
                for n, p in model.module.named_parameters()
            }
            if runtime.is_global_zero:
                torch.save(gathered, out / "gathered.pt")

    if strategy_name != "fsdp":
        on_step = None
    losses, norms = train(runtime, model, optimizer, loader, 0, STEPS, on_step)
    report.update(losses=losses, norms=norms, world_size=runtime.world_size)

    if strategy_name == "fsdp":
        inner = model.module
        report["sharded_params"] = all(isinstance(p, DTensor) for p in inner.parameters())
        report["optimizer_holds_module_params"] = [
            id(p) for g in optimizer.param_groups for p in g["params"]
        ] == [id(p) for p in inner.parameters()]
        report["checkpoint_wrapped"] = any(
            type(m).__name__ == "CheckpointWrapper" for m in inner.modules()
        )
        report.update(empty_init_checks(runtime))
        report.update(setup_module_then_optimizer(runtime))
    if runtime.is_global_zero:
        write_report(out / f"{strategy_name}.json", report)


def empty_init_checks(runtime: Runtime) -> dict:
    with runtime.init_module(empty_init=True):
        big = Net()
    meta_before = all(p.is_meta for p in big.parameters())
    optimizer = torch.optim.SGD(big.parameters(), lr=0.1)
    big, optimizer = runtime.setup(big, optimizer)
    params = dict(big.module.named_parameters())
    full = {n: p.full_tensor() for n, p in params.items()}
    weight = params["inp.weight"]
    shards = runtime.all_gather(weight.to_local())
    # one step through the remapped optimizer moves the sharded parameters
    before = {n: t.clone() for n, t in full.items()}
    loss = big(torch.randn(4, 16)).sum()
    runtime.backward(loss)
    optimizer.step()
    after = {n: p.full_tensor() for n, p in big.module.named_parameters()}
    return {
        "empty_meta_before": meta_before,
        "empty_materialized": not any(
            p.is_meta or t.is_meta for p, t in zip(params.values(), full.values(), strict=True)
        ),
        "empty_finite": all(bool(torch.isfinite(t).all()) for t in full.values()),
        "empty_sharded": all(isinstance(p, DTensor) for p in params.values())
        and tuple(weight.to_local().shape) == (32 // runtime.world_size, 16),
        "empty_shards_differ": not torch.equal(shards[0], shards[-1]),
        "empty_nonzero_init": all(
            bool(t.abs().sum() > 0) for n, t in full.items() if n.endswith("weight")
        ),
        "empty_step_moved": all(not torch.equal(before[n], after[n]) for n in before),
    }


def setup_module_then_optimizer(runtime: Runtime) -> dict:
    net = make_model()
    early = torch.optim.SGD(net.parameters(), lr=0.1)  # before setup_module
    net = runtime.setup_module(net)
    early = runtime.setup_optimizers(early)
    late = torch.optim.SGD(net.parameters(), lr=0.1)  # after setup_module
    late = runtime.setup_optimizers(late)
    ids = [id(p) for p in net.module.parameters()]
    return {
        "early_optimizer_repointed": [id(p) for p in early.param_groups[0]["params"]] == ids,
        "late_optimizer_unchanged": [id(p) for p in late.param_groups[0]["params"]] == ids,
    }


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
