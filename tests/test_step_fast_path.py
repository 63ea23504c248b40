"""The per-step fast paths of the set-up module, optimizer, loader and ``runtime.backward``.

Where the chosen strategy and precision do nothing around a call, switchyard makes the call
directly (decided once, at setup). These tests hold the fast paths to the slow ones: the same
losses and parameters bit for bit, hooks, ``compile``, attribute access, ``train()``, state dicts
and checkpoints still right; and they check that the fast path is not taken where work must
happen (autocast, input conversion, a gradient scaler, a strategy that replaces a step).
"""

from __future__ import annotations

import collections
import contextlib
import warnings
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import StepLR
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from switchyard import Runtime
from switchyard.builtin.precisions import MixedPrecision, TruePrecision
from switchyard.builtin.single_device import SingleDeviceStrategy
from switchyard.precision import Precision, overrides
from switchyard.strategy import Strategy
from switchyard.wrappers import RuntimeModule, RuntimeOptimizer, move_to_device


def launched(**kwargs: Any) -> Runtime:
    runtime = Runtime(accelerator="cpu", devices=1, **kwargs)
    runtime.launch()
    return runtime


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def make_loader() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(48, 8, generator=generator)
    y = x[:, :1] - 2 * x[:, 1:2]
    return DataLoader(TensorDataset(x, y), batch_size=8)


class SlowTrue(TruePrecision):
    """32-true with every per-step method replaced by the same work: forces the slow paths."""

    @property
    def wraps_forward(self) -> bool:
        return True

    def convert_input(self, data: Any) -> Any:
        return data

    def convert_output(self, data: Any) -> Any:
        return data

    def pre_backward(self, tensor: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        return tensor

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        return optimizer.step(**kwargs)


class StepCountingStrategy(SingleDeviceStrategy):
    """Replaces the strategy's step methods (by calling the defaults), as DDP or an engine
    replaces some of them; counts the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *a: Any, **k: Any) -> None:
        self.calls["backward"] += 1
        super().backward(tensor, module, *a, **k)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        self.calls["optimizer_step"] += 1
        return super().optimizer_step(optimizer, **kwargs)

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> Any:
        self.calls["no_backward_sync"] += 1
        return super().no_backward_sync(module, enabled)


def train(runtime: Runtime, steps: int = 6) -> tuple[list[torch.Tensor], nn.Module]:
    net = make_model()
    model, optimizer = runtime.setup(net, torch.optim.AdamW(net.parameters(), lr=1e-2))
    losses = []
    for step, (x, y) in enumerate(runtime.setup_dataloaders(make_loader())):
        if step == steps:
            break
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        runtime.backward(loss)
        optimizer.step()
        losses.append(loss.detach())
    return losses, net


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the slow path was taken")


# -- which path is taken --------------------------------------------------------------------------


def test_32_true_takes_every_fast_path(monkeypatch):
    runtime = launched(precision="32-true")
    net = make_model()
    model, optimizer = runtime.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    # patched on the base classes, so the defaults are still the defaults: the fast paths must
    # not call them, nor the wrapper's forward, nor nn.Module's call machinery for the wrapper
    for cls, name in (
        (Strategy, "backward"),
        (Strategy, "optimizer_step"),
        (Strategy, "no_backward_sync"),
        (Precision, "pre_backward"),
        (Precision, "backward"),
        (Precision, "optimizer_step"),
        (Precision, "forward_context"),
        (RuntimeModule, "forward"),
        (RuntimeModule, "_call_impl"),
    ):
        monkeypatch.setattr(cls, name, _refuse)
    x = torch.randn(4, 8)
    loss = model(x).sum()
    runtime.backward(loss)
    optimizer.step()
    with runtime.no_backward_sync(model), runtime.autocast():
        model(x).sum().backward()
    assert net[0].weight.grad is not None


def test_a_precision_or_strategy_that_replaces_a_step_gets_the_slow_path():
    strategy = StepCountingStrategy()
    runtime = launched(strategy=strategy, precision="32-true")
    net = make_model()
    model, optimizer = runtime.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    runtime.backward(model(torch.randn(4, 8)).sum())
    optimizer.step()
    with runtime.no_backward_sync(model):
        pass
    assert strategy.calls == {"backward": 1, "optimizer_step": 1, "no_backward_sync": 1}

    seen: list[str] = []

    class Recording(SlowTrue):
        def convert_input(self, data: Any) -> Any:
            seen.append("convert_input")
            return data

        def pre_backward(self, tensor: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
            seen.append("pre_backward")
            return tensor

        def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
            seen.append("optimizer_step")
            return optimizer.step(**kwargs)

    runtime = launched(precision=Recording())
    net = make_model()
    model, optimizer = runtime.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    runtime.backward(model(torch.randn(4, 8)).sum())
    optimizer.step()
    assert seen == ["convert_input", "pre_backward", "optimizer_step"]


def test_a_method_replaced_on_the_instance_counts_as_replaced():
    precision = TruePrecision()
    assert not precision.wraps_backward
    assert not precision.wraps_optimizer_step
    precision.pre_backward = lambda tensor, module: tensor  # type: ignore[method-assign]
    assert precision.wraps_backward
    assert not overrides(precision, Precision, "optimizer_step")
    assert overrides(MixedPrecision(), Precision, "pre_backward")
    assert not overrides(MixedPrecision(), MixedPrecision, "pre_backward")


def test_bf16_mixed_still_runs_its_forward_under_autocast():
    runtime = launched(precision="bf16-mixed")
    seen = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.is_autocast_enabled("cpu"))
            return self.linear(x)

    model = runtime.setup(Probe())
    out = model(torch.randn(2, 4))
    assert seen == [True]
    assert out.dtype == torch.float32  # cast back
    with runtime.autocast():
        assert torch.is_autocast_enabled("cpu")


def test_bf16_true_still_converts_inputs():
    runtime = launched(precision="bf16-true")
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.dtype)
            return x

    model = runtime.setup(Probe())
    assert model(torch.randn(2, 4)).dtype == torch.float32
    assert seen == [torch.bfloat16]


def test_a_gradient_scaler_keeps_the_slow_backward_and_step():
    runtime = launched(precision=MixedPrecision("bfloat16", scaler=True))
    assert runtime.precision.scaler is not None
    assert not runtime._backward_is_direct()
    net = make_model()
    model, optimizer = runtime.setup(net, torch.optim.SGD(net.parameters(), lr=0.0))
    assert not optimizer._direct_step
    x = torch.randn(4, 8)
    runtime.backward(model(x).float().sum())
    scaled = net[0].weight.grad.clone()
    net.zero_grad()
    model(x).float().sum().backward()
    # the scaler multiplied the loss: the gradients are scale times the plain ones
    torch.testing.assert_close(scaled, net[0].weight.grad * runtime.precision.scaler.get_scale())


# -- the fast path does what the slow one does ------------------------------------------------------


def test_fast_and_slow_paths_give_the_same_losses_and_parameters_bit_for_bit():
    fast_runtime = launched(precision="32-true")
    slow_runtime = launched(precision=SlowTrue())
    assert fast_runtime._backward_is_direct()
    assert not slow_runtime._backward_is_direct()
    fast, fast_net = train(fast_runtime)
    slow, slow_net = train(slow_runtime)
    raw_net = make_model()
    raw_opt = torch.optim.AdamW(raw_net.parameters(), lr=1e-2)
    raw = []
    for step, (x, y) in enumerate(make_loader()):
        if step == 6:
            break
        loss = F.mse_loss(raw_net(x), y)
        raw_opt.zero_grad()
        loss.backward()
        raw_opt.step()
        raw.append(loss.detach())

    for a, b, c in zip(fast, slow, raw, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
    for p, q, r in zip(
        fast_net.parameters(), slow_net.parameters(), raw_net.parameters(), strict=True
    ):
        assert torch.equal(p, q)
        assert torch.equal(p, r)
    assert not torch.equal(fast_net[0].weight, make_model()[0].weight)  # it did step


def test_backward_arguments_reach_tensor_backward():
    runtime = launched()
    leaf = torch.ones(3, requires_grad=True)
    out = leaf * 2
    runtime.backward(out, torch.full((3,), 0.5), retain_graph=True)
    runtime.backward(out, gradient=torch.ones(3))
    assert torch.equal(leaf.grad, torch.full((3,), 3.0))


def test_hooks_on_the_wrapper_and_global_hooks_still_run():
    for precision in ("32-true", "bf16-mixed"):
        runtime = launched(precision=precision)
        net = nn.Linear(4, 4)
        model = runtime.setup(net)
        x = torch.randn(2, 4)
        calls: list[str] = []
        seen: list[nn.Module] = []

        def pre_hook(module: nn.Module, args: Any, calls: list[str] = calls) -> Any:
            calls.append("pre")
            return (args[0] * 0,)

        def post_hook(module: nn.Module, args: Any, out: Any, calls: list[str] = calls) -> Any:
            calls.append("post")
            return out + 1

        def global_hook(module: nn.Module, a: Any, o: Any, seen: list[nn.Module] = seen) -> None:
            seen.append(module)

        pre = model.register_forward_pre_hook(pre_hook)
        post = model.register_forward_hook(post_hook)
        out = model(x)
        assert calls == ["pre", "post"]
        with runtime.autocast():
            expected = net(torch.zeros(2, 4))
        assert torch.equal(out, expected.float() + 1)
        pre.remove()
        post.remove()

        handle = nn.modules.module.register_module_forward_hook(global_hook)
        try:
            model(x)
        finally:
            handle.remove()
        assert seen == [net, model]  # the wrapper is a module called like any other

        calls.clear()
        model(x)
        assert calls == []
        assert model._direct  # with the hooks removed, calls are direct again


def test_full_backward_hook_on_the_wrapper_runs():
    runtime = launched()
    model = runtime.setup(nn.Linear(4, 4))
    grads: list[torch.Tensor] = []
    model.register_full_backward_hook(lambda m, gin, gout: grads.append(gout[0]))
    runtime.backward(model(torch.randn(2, 4, requires_grad=True)).sum())
    assert len(grads) == 1
    assert torch.equal(grads[0], torch.ones(2, 4))


def test_compiling_the_wrapper_compiles_the_wrapper_only():
    runtime = launched()
    net = nn.Linear(4, 4)
    model = runtime.setup(net)
    calls = []
    model.compile(backend=lambda gm, example_inputs: calls.append(1) or gm.forward)
    x = torch.randn(2, 4)
    torch.testing.assert_close(model(x), net(x))
    assert calls == [1]  # the compiled call was used
    assert net._compiled_call_impl is None  # the user's own module was not compiled with it


def test_attribute_access_and_assignment_are_what_dir_based_lookup_gave():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 2)
            self.temperature = 2.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) / self.temperature

    runtime = launched()
    net = Net()
    model = runtime.setup(net)
    for name in (
        "training",
        "module",
        "forward",
        "_forward_module",
        "_precision",
        "body",
        "temperature",
        "state_dict",
        "0",
        "nothing",
        "__class__",
        "_inner",
    ):
        assert model._has_own(name) == (name in dir(model)), name
    assert model.body is net.body
    assert model.temperature == 2.0
    model.temperature = 4.0
    model.extra = "x"
    assert net.temperature == 4.0
    assert net.extra == "x"
    assert "extra" not in model.__dict__
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = model.no_such_thing
    assert model._forward_module is net


def test_train_and_eval_set_the_flag_everywhere_and_return_the_wrapper():
    runtime = launched()
    net = make_model()
    model = runtime.setup(net)
    assert model.eval() is model
    assert not model.training
    assert not net.training
    assert not any(m.training for m in net.modules())
    assert model.train() is model
    assert model.training
    assert all(m.training for m in net.modules())
    with pytest.raises(ValueError, match="boolean"):
        model.train("yes")  # type: ignore[arg-type]


def test_state_dict_and_checkpoint_round_trip_on_the_fast_path(tmp_path):
    runtime = launched()
    _losses, net = train(runtime, steps=2)
    model = runtime._modules[0]
    assert list(model.state_dict()) == list(net.state_dict())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    runtime.save(tmp_path / "c.pt", {"model": model})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    runtime.load(tmp_path / "c.pt", {"model": model})
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


# -- the optimizer ----------------------------------------------------------------------------------


def test_the_direct_step_takes_a_closure_and_returns_its_loss():
    runtime = launched()
    net = make_model()
    model, optimizer = runtime.setup(net, torch.optim.LBFGS(net.parameters(), max_iter=2))
    assert isinstance(optimizer, RuntimeOptimizer)
    assert optimizer._direct_step
    x, y = next(iter(make_loader()))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        runtime.backward(loss)
        return loss

    first = optimizer.step(closure)
    assert isinstance(first, torch.Tensor)
    assert optimizer.step(closure) < first


@pytest.mark.parametrize("scheduler_before_setup", [False, True])
def test_a_scheduler_sees_the_direct_steps(scheduler_before_setup):
    runtime = launched()
    net = make_model()
    adamw = torch.optim.AdamW(net.parameters(), lr=0.1)
    scheduler = StepLR(adamw, step_size=1, gamma=0.5) if scheduler_before_setup else None
    model, optimizer = runtime.setup(net, adamw)
    if scheduler is None:
        scheduler = StepLR(optimizer, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()"
        for step, (x, y) in enumerate(runtime.setup_dataloaders(make_loader())):
            if step == 3:
                break
            optimizer.zero_grad()
            runtime.backward(F.mse_loss(model(x), y))
            optimizer.step()
            scheduler.step()
    assert adamw.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert len(adamw.state) == len(list(net.parameters()))


def test_step_hooks_registered_on_the_wrapper_run():
    runtime = launched()
    net = make_model()
    model, optimizer = runtime.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    runtime.backward(model(torch.randn(2, 8)).sum())
    optimizer.step()
    assert calls == ["pre", "post"]


# -- the loader and device moves --------------------------------------------------------------------


def test_loader_on_cpu_hands_out_the_loaders_own_iterator_and_advances_the_epoch():
    runtime = launched()
    dataset = TensorDataset(torch.arange(16.0))
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
    loader = runtime.setup_dataloaders(
        DataLoader(dataset, batch_size=4, sampler=sampler), use_distributed_sampler=False
    )
    first = iter(loader)
    assert type(first).__module__.startswith("torch.utils.data")  # no wrapper generator
    assert sampler.epoch == 0  # set before the loader's iterator drew its indices
    epoch0 = [b[0].tolist() for b in first]
    epoch1 = [b[0].tolist() for b in loader]
    assert sampler.epoch == 1
    assert epoch0 != epoch1
    assert sorted(i for batch in epoch0 for i in batch) == list(range(16))
    assert sorted(i for batch in epoch1 for i in batch) == list(range(16))


class Pair(NamedTuple):
    x: torch.Tensor
    y: Any


def test_move_to_device_matches_tree_map_on_every_structure():
    """``meta`` stands in for an accelerator: the CPU build of torch has it."""
    t = torch.randn(2, 3)
    structures: list[Any] = [
        t,
        (t, t.long()),
        [t, 1, "a", None],
        {"x": t, "nested": [(t,), {"deep": t}], "n": 3},
        Pair(t, [t]),
        collections.OrderedDict(a=t, b=(t, 2)),
        [Pair(t, {"k": t})],
        "text",
        None,
    ]
    meta = torch.device("meta")

    def reference(x: Any) -> Any:
        return x.to(meta) if isinstance(x, torch.Tensor) else x

    for data in structures:
        got = move_to_device(data, meta)
        expected = tree_map(reference, data)

        def same(a: Any, b: Any) -> None:
            assert type(a) is type(b)
            if isinstance(a, torch.Tensor):
                assert a.device == b.device == meta
                assert a.dtype == b.dtype
                assert a.shape == b.shape
            elif isinstance(a, (tuple, list)):
                assert len(a) == len(b)
                for u, v in zip(a, b, strict=True):
                    same(u, v)
            elif isinstance(a, dict):
                assert list(a) == list(b)
                for key in a:
                    same(a[key], b[key])
            else:
                assert a == b

        same(got, expected)
    # already there: the very same tensors, not copies
    moved = move_to_device({"x": t, "y": [t]}, torch.device("cpu"))
    assert moved["x"] is t
    assert moved["y"][0] is t


def test_no_backward_sync_still_checks_its_argument():
    runtime = launched()
    model = runtime.setup(make_model())
    with pytest.raises(TypeError, match=r"runtime\.setup"):
        runtime.no_backward_sync(model.module)
    for enabled in (True, False):
        context = runtime.no_backward_sync(model, enabled=enabled)
        assert isinstance(context, contextlib.AbstractContextManager)
        with context, context:  # stateless: nests and re-enters
            pass


def test_torch_compile_traces_the_wrapper_in_one_graph():
    runtime = launched()
    net = nn.Linear(4, 4)
    model = runtime.setup(net)
    x = torch.randn(2, 4)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_count == 1
    assert explanation.graph_break_count == 0
    assert torch.equal(torch.compile(model, backend="eager")(x), net(x))
