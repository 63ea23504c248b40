"""The contracts every engine and device fits, shown with the test plugins in
``tests/plugins/switchyard_contract`` and with no case for them in core:

* a strategy whose engine owns precision, backward and the optimizer step (as DeepSpeed's does)
  replaces the user's precision, and can return optimizers it built itself;
* optimizers created before ``setup`` step the parameters the module holds after it, on an
  accelerator whose moves create new ``Parameter`` objects (as PrivateUse1 devices and XLA do);
* capabilities an accelerator declares (no process group backend, no sharding, a vendor's own
  c10d backend) are checked by selection before any process starts.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.distributed as dist
from torch import nn

from switchyard import Accelerator, AcceleratorEntry, Runtime, SelectionError, hookimpl
from switchyard.parameters import ParameterNames

sys.path.insert(0, str(Path(__file__).parent / "plugins"))

from switchyard_contract import plugin as contract_plugin
from switchyard_contract.engine import Engine, EnginePrecision, EngineStrategy

STEPS = 6


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(32, 8, generator=generator), torch.randn(32, 1, generator=generator)


def train(runtime: Runtime, model: Any, optimizer: Any, steps: int = STEPS) -> list[float]:
    x, y = batch()
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        runtime.backward(loss)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def plain_losses(make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> list[float]:
    model = make_model()
    optimizer = make_optimizer(model)
    x, y = batch()
    losses = []
    for _ in range(STEPS):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


# -- a strategy that owns the training step -------------------------------------------------


class AutocastProbe(nn.Module):
    """Records, on every forward, whether autocast was on and the dtype of its input."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.is_autocast_enabled("cpu"), x.dtype))
        return self.inner(x)


def engine_runtime(precision: str, **engine_args: Any) -> Runtime:
    return Runtime(
        accelerator="cpu",
        strategy=EngineStrategy(**engine_args),
        precision=precision,
        plugins=[contract_plugin],
    )


def test_engine_replaces_the_precision_and_nothing_of_the_users_runs() -> None:
    runtime = engine_runtime("bf16-mixed", optimizer={"type": "sgd", "lr": 0.05})
    strategy = runtime.strategy
    assert isinstance(strategy, EngineStrategy)
    selected = strategy.selected_precision
    assert selected is not None
    assert selected.name == "bf16-mixed"
    # the runtime reads only the precision the strategy connected
    assert isinstance(runtime.precision, EnginePrecision)
    assert runtime.plan.precision is runtime.precision

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the runtime used the precision the strategy replaced")

    for method in ("forward_context", "convert_module", "pre_backward", "optimizer_step"):
        setattr(selected, method, never)

    probe = AutocastProbe(make_model())
    model, optimizer = runtime.setup(probe)  # the engine built the optimizer from its config
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.05
    engine = model._forward_module
    assert isinstance(engine, Engine)
    assert {p.dtype for p in engine.module.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in engine.masters} == {torch.float32}
    with runtime.autocast():
        assert not torch.is_autocast_enabled("cpu")

    losses = train(runtime, model, optimizer)
    assert engine.backward_calls == engine.steps == STEPS
    assert probe.seen == [(False, torch.bfloat16)] * STEPS
    assert losses[-1] < losses[0]
    # exactly what the same engine does written by hand: bf16 model, float32 masters
    reference = make_model()
    master = copy.deepcopy(reference)
    reference.to(torch.bfloat16)
    sgd = torch.optim.SGD(master.parameters(), lr=0.05)
    x, y = batch()
    expected = []
    for _ in range(STEPS):
        loss = nn.functional.mse_loss(reference(x.bfloat16()).float(), y)
        sgd.zero_grad()
        reference.zero_grad()
        loss.backward()
        for p, m in zip(reference.parameters(), master.parameters(), strict=True):
            m.grad = p.grad.float()
        sgd.step()
        with torch.no_grad():
            for p, m in zip(reference.parameters(), master.parameters(), strict=True):
                p.copy_(m)
        expected.append(float(loss.detach()))
    assert losses == expected


def test_engine_takes_an_optimizer_created_before_setup() -> None:
    runtime = engine_runtime("32-true")
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = runtime.setup(model, optimizer)
    assert train(runtime, model, optimizer) == plain_losses(
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1)
    )


def test_engine_without_optimizer_config_returns_the_module_alone() -> None:
    runtime = engine_runtime("32-true")
    wrapped = runtime.setup(make_model())
    assert isinstance(wrapped, nn.Module)


def test_engine_built_scheduler_follows_the_optimizer_it_built() -> None:
    step_lr = {"step_size": 2, "gamma": 0.5}
    runtime = engine_runtime("32-true", optimizer={"type": "sgd", "lr": 0.1}, step_lr=step_lr)
    model, optimizer, scheduler = runtime.setup(make_model())
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert scheduler.optimizer is optimizer.optimizer
    train(runtime, model, optimizer, steps=4)
    # the engine stepped it in each optimizer.step(): two halvings after four steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)
    assert scheduler.get_last_lr() == [pytest.approx(0.025)]
    # with the user's own optimizer the engine builds no scheduler, and none is returned
    runtime = engine_runtime("32-true", optimizer={"type": "sgd", "lr": 0.1}, step_lr=step_lr)
    user_model = make_model()
    result = runtime.setup(user_model, torch.optim.SGD(user_model.parameters(), lr=0.1))
    assert len(result) == 2


def test_setup_module_refuses_to_drop_engine_built_optimizers() -> None:
    runtime = engine_runtime("32-true", optimizer={"type": "sgd", "lr": 0.1})
    with pytest.raises(RuntimeError, match=r"model, optimizer = runtime.setup\(model\)"):
        runtime.setup_module(make_model())


def test_float16_engine_scales_the_loss_itself() -> None:
    runtime = engine_runtime("16-mixed", optimizer={"type": "sgd", "lr": 0.05})
    model, optimizer = runtime.setup(make_model())
    assert getattr(runtime.precision, "scaler", None) is None  # no GradScaler of switchyard's
    engine = model._forward_module
    assert engine.loss_scale == 1024.0
    losses = train(runtime, model, optimizer)
    assert losses[-1] < losses[0]


# -- parameters replaced by a device move ---------------------------------------------------


def fresh_runtime(**kwargs: Any) -> Runtime:
    return Runtime(accelerator="fresh_params_cpu", plugins=[contract_plugin], **kwargs)


def test_the_test_accelerator_really_replaces_parameters() -> None:
    """Without this, the tests below would prove nothing."""
    runtime = fresh_runtime()
    runtime.launch()
    model = make_model()
    before = list(model.parameters())
    model.to(runtime.device)
    assert not any(p is q for p in before for q in model.parameters())
    runtime.teardown()


def test_optimizer_created_before_setup_trains_the_moved_parameters() -> None:
    runtime = fresh_runtime()
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    originals = list(model.parameters())
    model, optimizer = runtime.setup(model, optimizer)
    held = list(model.module.parameters())
    assert not any(p is q for p in originals for q in held)
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in held]
    assert train(runtime, model, optimizer) == plain_losses(
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1)
    )
    runtime.teardown()


def test_optimizer_state_created_before_setup_moves_with_the_parameters() -> None:
    x, y = batch()

    def stepped_once() -> tuple[nn.Module, torch.optim.Optimizer]:
        model = make_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        return model, optimizer

    model, optimizer = stepped_once()
    runtime = fresh_runtime()
    model, optimizer = runtime.setup(model, optimizer)
    held = list(model.module.parameters())
    assert set(optimizer.state) == set(held)
    assert all(float(optimizer.state[p]["step"]) == 1.0 for p in held)

    reference, reference_optimizer = stepped_once()
    for _ in range(3):
        for m, o, run in (
            (model, optimizer, runtime.backward),
            (reference, reference_optimizer, torch.Tensor.backward),
        ):
            run(nn.functional.mse_loss(m(x), y))
            o.step()
            o.zero_grad()
    for a, b in zip(held, reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    runtime.teardown()


def test_setup_module_then_setup_optimizers_repoints_too() -> None:
    runtime = fresh_runtime()
    model = make_model()
    early = torch.optim.SGD(model.parameters(), lr=0.1)
    model = runtime.setup_module(model)
    early = runtime.setup_optimizers(early)
    assert [id(p) for p in early.param_groups[0]["params"]] == [
        id(p) for p in model.module.parameters()
    ]
    assert train(runtime, model, early) == plain_losses(
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1)
    )
    runtime.teardown()


def test_parameter_names_follow_tied_weights_and_leave_foreign_parameters() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 4)
            self.head = nn.Linear(4, 5, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    extra = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([*model.parameters(), extra], lr=0.1)
    names = ParameterNames(model)
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        model.to(torch.float64)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    # the optimizer's one tied parameter follows its first name
    assert names.repoint(optimizer, model) == 1
    params = optimizer.param_groups[0]["params"]
    assert params[0] is model.embed.weight
    assert params[0].dtype == torch.float64
    assert params[1] is extra  # not the module's: left alone


def test_parameter_names_never_mistake_a_freed_parameter() -> None:
    model = nn.Linear(2, 2)
    names = ParameterNames(model)
    old = model.weight
    assert names.name_of(old) == "weight"
    model.weight = nn.Parameter(torch.zeros(2, 2))
    del old
    stranger = torch.zeros(2, 2)  # may reuse the freed id
    assert names.name_of(stranger) is None


# -- capabilities checked before any process starts -----------------------------------------


class NoBackendAccelerator(Accelerator):
    """A device that cannot talk to other processes: the CPU, declared without a backend."""

    device_type: ClassVar[str] = "cpu"
    distributed_backend: ClassVar[str | None] = None

    @classmethod
    def parse_devices(cls, devices: Any) -> list[int]:
        return list(range(int(devices))) if devices != "auto" else [0]

    @classmethod
    def get_device(cls, index: int) -> torch.device:
        return torch.device("cpu")


class NoShardingAccelerator(NoBackendAccelerator):
    distributed_backend: ClassVar[str | None] = "gloo"
    supports_sharding: ClassVar[bool] = False


class VendorBackendAccelerator(NoBackendAccelerator):
    distributed_backend: ClassVar[str | None] = "contractgloo"


class UnknownBackendAccelerator(NoBackendAccelerator):
    distributed_backend: ClassVar[str | None] = "nosuchbackend"


def accelerator_plugin(name: str, cls: type[Accelerator]) -> object:
    class Plugin:
        @hookimpl
        def switchyard_accelerators(self) -> Iterator[AcceleratorEntry]:
            yield AcceleratorEntry(name=name, factory=cls, priority=-100)

    return Plugin()


def test_auto_strategy_never_picks_a_multi_process_strategy_for_a_device_without_backend() -> None:
    plugin = accelerator_plugin("lonely", NoBackendAccelerator)
    with pytest.raises(SelectionError, match=r"declares no torch\.distributed backend") as raised:
        Runtime(accelerator="lonely", devices=2, plugins=[plugin])
    assert "devices=1" in str(raised.value)
    # one device is fine, and auto picks the single-process strategy
    runtime = Runtime(accelerator="lonely", devices=1, plugins=[plugin])
    assert runtime.plan.names["strategy"] == "single_device"


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "fsdp"])
def test_a_named_multi_process_strategy_is_refused_for_a_device_without_backend(
    strategy: str,
) -> None:
    plugin = accelerator_plugin("lonely", NoBackendAccelerator)
    with pytest.raises(SelectionError, match="declares no process group backend") as raised:
        Runtime(accelerator="lonely", strategy=strategy, devices=2, plugins=[plugin])
    assert "single_device" in str(raised.value)


def test_a_sharded_strategy_is_refused_where_the_accelerator_cannot_shard() -> None:
    plugin = accelerator_plugin("flat", NoShardingAccelerator)
    with pytest.raises(SelectionError, match="supports_sharding=False"):
        Runtime(accelerator="flat", strategy="fsdp", devices=2, plugins=[plugin])
    # the same device runs DDP, and auto never offers it FSDP
    assert Runtime(accelerator="flat", strategy="ddp", devices=2, plugins=[plugin])


def test_a_strategy_instance_checks_the_backend_in_bind() -> None:
    from switchyard_ddp import DDPStrategy

    plugin = accelerator_plugin("lonely", NoBackendAccelerator)
    with pytest.raises(SelectionError, match="declares no process group backend"):
        Runtime(accelerator="lonely", strategy=DDPStrategy(), devices=2, plugins=[plugin])


def test_a_backend_torch_does_not_know_is_refused_with_how_to_register_it() -> None:
    plugin = accelerator_plugin("odd", UnknownBackendAccelerator)
    with pytest.raises(SelectionError, match="register_backend") as raised:
        Runtime(accelerator="odd", strategy="ddp", devices=2, plugins=[plugin])
    assert "'nosuchbackend'" in str(raised.value)


def _gloo_under_another_name(store: Any, rank: int, size: int, timeout: Any) -> dist.ProcessGroup:
    # what a vendor's c10d backend provides: a process group for its device's tensors
    from torch.distributed.distributed_c10d import ProcessGroupGloo

    return ProcessGroupGloo(store, rank, size, timeout)


@pytest.fixture
def vendor_backend() -> str:
    if "contractgloo" not in dist.Backend.backend_list:
        dist.Backend.register_backend("contractgloo", _gloo_under_another_name, devices=["cpu"])
    return "contractgloo"


def test_a_vendor_c10d_backend_carries_ddp(vendor_backend: str) -> None:
    plugin = accelerator_plugin("vendor", VendorBackendAccelerator)
    runtime = Runtime(accelerator="vendor", strategy="ddp", devices=1, plugins=[plugin])
    runtime.launch()
    try:
        assert dist.get_backend() == vendor_backend
        total = runtime.all_reduce(torch.tensor([2.0]), op="sum")
        assert float(total) == 2.0
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer = runtime.setup(model, optimizer)
        assert train(runtime, model, optimizer) == plain_losses(
            lambda m: torch.optim.SGD(m.parameters(), lr=0.1)
        )
    finally:
        runtime.teardown()


class InitialisedDevice(NoBackendAccelerator):
    """A fake (said to be one) of a CUDA-like device that this process already used."""

    distributed_backend: ClassVar[str | None] = "gloo"

    @classmethod
    def is_initialized(cls) -> bool:
        return True


class ForkSafeInitialisedDevice(InitialisedDevice):
    forks_after_init: ClassVar[bool] = True


def test_fork_is_refused_after_a_fork_unsafe_device_was_initialised() -> None:
    plugin = accelerator_plugin("used", InitialisedDevice)
    runtime = Runtime(accelerator="used", strategy="ddp_fork", devices=2, plugins=[plugin])
    with pytest.raises(SelectionError, match="ddp_spawn") as raised:
        runtime.launch(lambda rt: None)
    assert "already initialised its 'cpu' device" in str(raised.value)


def test_fork_is_allowed_where_the_device_survives_it() -> None:
    from switchyard.parallel import check_fork_safe

    check_fork_safe(ForkSafeInitialisedDevice, "DDPStrategy")  # does not raise
