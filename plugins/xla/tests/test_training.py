"""Training on XLA's CPU device (PJRT_DEVICE=CPU) through the XLA strategies, against eager
PyTorch on the CPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from switchyard import Runtime, SelectionError

sys.path.insert(0, str(Path(__file__).parent))
import itertools

import xla_problems as problems
from xla_problems import HAS_TORCH_XLA, NEEDS_TORCH_XLA

pytestmark = [
    pytest.mark.skipif(not HAS_TORCH_XLA, reason=NEEDS_TORCH_XLA),
    pytest.mark.skipif(
        os.environ.get("PJRT_DEVICE", "").upper() != "CPU",
        reason="these tests use XLA's CPU device: run them with PJRT_DEVICE=CPU (scripts/test-xla)",
    ),
]

# XLA's CPU compiler fuses and orders the float32 arithmetic differently from eager PyTorch
RTOL, ATOL = 1e-5, 1e-6


def train(runtime: Runtime, steps: int = problems.STEPS) -> tuple[list[float], nn.Module, object]:
    """The optimizer is created before setup, from the CPU parameters."""
    net = problems.model()
    optimizer = torch.optim.SGD(net.parameters(), lr=problems.LR)
    before = {id(p) for p in net.parameters()}
    model, optimizer = runtime.setup(net, optimizer)
    held = [p for group in optimizer.param_groups for p in group["params"]]
    # moving to XLA created new Parameters, and the optimizer steps those
    assert not before & {id(p) for p in net.parameters()}
    assert [id(p) for p in held] == [id(p) for p in net.parameters()]
    losses = []
    for x, y in runtime.setup_dataloaders(problems.loader()):
        assert x.device.type == "xla"
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        runtime.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    return losses[:steps], model, optimizer


def test_single_xla_matches_eager_cpu() -> None:
    runtime = Runtime(accelerator="xla", strategy="single_xla", devices=1)
    losses, model, _ = train(runtime)
    expected, parameters = problems.eager_cpu_losses()
    torch.testing.assert_close(losses, expected, rtol=RTOL, atol=ATOL)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value.cpu(), parameters[name], rtol=RTOL, atol=ATOL)


def test_auto_selects_the_xla_pieces() -> None:
    runtime = Runtime(accelerator="auto", strategy="auto", devices="auto")
    assert runtime.plan.names["accelerator"] == "xla"
    assert runtime.plan.names["strategy"] == "single_xla"


def test_each_step_is_one_compiled_graph() -> None:
    """torch_xla.sync() after every optimizer step: the graph of step 1 is compiled once and
    rerun by the steps after it, instead of one graph growing over the whole run."""
    import torch_xla.core.xla_model as xm
    import torch_xla.debug.metrics as met

    runtime = Runtime(accelerator="xla", strategy="single_xla", devices=1)
    net = problems.model()
    model, optimizer = runtime.setup(net, torch.optim.SGD(net.parameters(), lr=problems.LR))
    x, y = (t[: problems.BATCH].to(runtime.device) for t in problems.data())
    compiles, executions = [], []
    for _ in range(5):
        optimizer.zero_grad()
        runtime.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
        xm.wait_device_ops()  # executions are counted when they finish
        compiles.append(met.metric_data("CompileTime")[0])
        executions.append(met.metric_data("ExecuteTime")[0])
    # the first step's graph differs (its gradients are created, not replaced); from the
    # second on, every step reruns one compiled graph, and each step ran on its own
    assert compiles[1:] == [compiles[1]] * 4, f"compilations after each step: {compiles}"
    steps = [b - a for a, b in itertools.pairwise(executions)]
    assert steps == [1, 1, 1, 1], f"graphs executed by each step after the first: {steps}"


def test_bf16_mixed_trains_under_xla_autocast() -> None:
    from switchyard_xla.precision import XLAMixedPrecision

    runtime = Runtime(accelerator="xla", strategy="single_xla", devices=1, precision="bf16-mixed")
    assert isinstance(runtime.precision, XLAMixedPrecision)
    dtypes: list[torch.dtype] = []
    net = problems.model()
    net[0].register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    optimizer = torch.optim.SGD(net.parameters(), lr=problems.LR)
    model, optimizer = runtime.setup(net, optimizer)
    x, y = (t.to(runtime.device) for t in problems.data())
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        output = model(x)
        loss = nn.functional.mse_loss(output, y)
        runtime.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    assert output.dtype == torch.float32  # handed back in the default dtype
    assert dtypes[0] == torch.bfloat16  # the linear layer computed in bfloat16
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert losses[-1] < 0.9 * losses[0], losses
    x_cpu, y_cpu = problems.data()
    expected = nn.functional.mse_loss(problems.model()(x_cpu), y_cpu).item()
    # bfloat16 keeps 8 bits of mantissa: the first loss agrees with float32's to about 1%
    assert losses[0] == pytest.approx(expected, rel=2e-2)
    assert losses[0] != expected  # and it was not computed in float32


def test_checkpoint_is_written_on_the_cpu_atomically(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    runtime = Runtime(accelerator="xla", strategy="single_xla", devices=1)
    net = problems.model()
    model, optimizer = runtime.setup(net, torch.optim.AdamW(net.parameters(), lr=1e-2))
    x, y = (t.to(runtime.device) for t in problems.data())
    runtime.backward(nn.functional.mse_loss(model(x), y))
    optimizer.step()
    path = folder / "last.pt"
    runtime.save(path, {"model": model, "optimizer": optimizer, "step": 1})
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]  # no temporary left
    saved = torch.load(path, weights_only=True)  # loads without torch_xla's tensors
    assert all(v.device.type == "cpu" for v in saved["model"].values())
    state = saved["optimizer"]["state"][0]
    assert state["exp_avg"].device.type == "cpu"
    expected = {k: v.cpu() for k, v in model.state_dict().items()}
    for name, value in saved["model"].items():
        assert torch.equal(value, expected[name])

    other = problems.model()
    for p in other.parameters():
        nn.init.zeros_(p)
    model2, optimizer2 = runtime.setup(other, torch.optim.AdamW(other.parameters(), lr=1e-2))
    remainder = runtime.load(path, {"model": model2, "optimizer": optimizer2})
    assert remainder == {"step": 1}
    for name, value in model2.state_dict().items():
        assert value.device.type == "xla"
        assert torch.equal(value.cpu(), expected[name])
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"].cpu(), state["exp_avg"].cpu())


def test_xla_strategy_one_process_runs_through_torch_xla_launch() -> None:
    def main(runtime: Runtime) -> list[float]:
        return train(runtime)[0]

    runtime = Runtime(accelerator="xla", strategy="xla", devices=1)
    losses = runtime.launch(main)
    expected, _ = problems.eager_cpu_losses()
    assert losses is not None
    torch.testing.assert_close(losses, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.skip(
    reason="multi-process XLA collectives do not work on XLA's CPU device (pytorch/xla#9089): "
    "torch_xla runs CPU devices as threads of one process; this runs where a TPU or GPU is lent"
)
def test_xla_strategy_on_several_devices() -> None:
    def main(runtime: Runtime) -> list[float]:
        return train(runtime)[0]

    runtime = Runtime(accelerator="xla", strategy="xla", devices=-1)
    losses = runtime.launch(main)
    assert losses is not None
    torch.testing.assert_close(losses, problems.eager_cpu_losses()[0], rtol=1e-4, atol=1e-5)


def test_selection_refuses_what_xla_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SelectionError, match="bfloat16 only"):
        Runtime(accelerator="xla", strategy="single_xla", precision="16-mixed")
    # two CPU devices visible: the multi-process strategy is refused before any process starts
    monkeypatch.setenv("CPU_NUM_DEVICES", "2")
    with pytest.raises(SelectionError, match=r"pytorch/xla#9089.*xla_spmd"):
        Runtime(accelerator="xla", strategy="xla", devices=2)
    with pytest.raises(SelectionError, match="devices=1"):
        Runtime(accelerator="xla", strategy="xla_spmd", devices=2)
    # auto means one device there, so it never picks the multi-process strategy
    assert Runtime(accelerator="xla", devices="auto").plan.names["strategy"] == "single_xla"
