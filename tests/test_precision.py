"""The torch.amp precisions through ``Runtime`` on the CPU: parameter dtypes, what forward sees,
output dtypes, the gradient scaler, and that full precision costs nothing per step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from switchyard import Runtime

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64

# name: (parameter dtype, dtype forward receives, autocast dtype or None, dtype computed in
# forward, dtype returned to the caller)
EXPECTED = {
    "32-true": (f32, f32, None, f32, f32),
    "64-true": (f64, f64, None, f64, f64),
    "16-mixed": (f32, f32, f16, f16, f32),
    "bf16-mixed": (f32, f32, bf16, bf16, f32),
    "16-true": (f16, f16, None, f16, f32),
    "bf16-true": (bf16, bf16, None, bf16, f32),
}
ALIASES = [
    ("32", "32-true"),
    (32, "32-true"),
    ("64", "64-true"),
    (64, "64-true"),
    ("16", "16-mixed"),
    (16, "16-mixed"),
    ("bf16", "bf16-mixed"),
]
VALUES = [(name, name) for name in EXPECTED] + ALIASES


class Probe(nn.Module):
    """Records, inside forward, what the precision arranged around it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.register_buffer("offset", torch.zeros(3))
        self.seen: dict[str, object] = {}

    def forward(self, x: torch.Tensor, index: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        enabled = torch.is_autocast_enabled("cpu")
        y = self.linear(x)
        self.seen = {
            "autocast": torch.get_autocast_dtype("cpu") if enabled else None,
            "input": x.dtype,
            "scale": scale.dtype,
            "index": index.dtype,
            "computed": y.dtype,
        }
        return y * scale + self.offset


def runtime_for(precision: object) -> Runtime:
    return Runtime(accelerator="cpu", devices=1, precision=precision)  # type: ignore[arg-type]


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (
        0.1 * torch.randn(8, 4, generator=generator),
        torch.arange(8),
        torch.tensor(1.0),
    )


@pytest.mark.parametrize(("value", "name"), VALUES)
def test_forward_under_each_precision(value, name):
    param_dtype, input_dtype, autocast_dtype, computed_dtype, output_dtype = EXPECTED[name]
    runtime = runtime_for(value)
    model = Probe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = runtime.setup(model, optimizer)
    x, index, scale = inputs()

    output = model(x, index, scale=scale)

    assert runtime.precision.name == name
    assert {p.dtype for p in model.parameters()} == {param_dtype}
    assert model.module.offset.dtype == param_dtype
    assert model.module.seen == {
        "autocast": autocast_dtype,
        "input": input_dtype,
        "scale": input_dtype,  # keyword arguments are converted too
        "index": torch.int64,  # integer tensors never are
        "computed": computed_dtype,
    }
    assert output.dtype == output_dtype
    # nothing leaks out of forward
    assert torch.get_default_dtype() == f32
    assert not torch.is_autocast_enabled("cpu")
    assert x.dtype == f32


@pytest.mark.parametrize("name", list(EXPECTED))
def test_training_step_under_each_precision(name):
    param_dtype = EXPECTED[name][0]
    runtime = runtime_for(name)
    torch.manual_seed(0)
    model = Probe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = runtime.setup(model, optimizer)
    before = model.module.linear.weight.detach().clone()

    loss = model(*inputs()).float().pow(2).mean()
    runtime.backward(loss)
    optimizer.step()

    weight = model.module.linear.weight
    assert weight.dtype == param_dtype
    assert weight.grad is not None
    assert weight.grad.dtype == param_dtype
    assert torch.isfinite(weight).all()
    assert not torch.equal(weight.detach(), before)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_init_module_creates_parameters_in_the_precision_dtype(name):
    runtime = runtime_for(name)
    with runtime.init_module():
        model = nn.Linear(3, 3)
        created = torch.ones(2)
    assert model.weight.dtype == EXPECTED[name][0]
    assert model.weight.device == torch.device("cpu")
    assert created.dtype == EXPECTED[name][0]
    assert torch.get_default_dtype() == f32
    assert torch.ones(2).dtype == f32


@pytest.mark.parametrize("name", list(EXPECTED))
def test_init_tensor_creates_tensors_in_the_precision_dtype(name):
    runtime = runtime_for(name)
    with runtime.init_tensor():
        created = torch.zeros(2, 3)
        integers = torch.arange(3)
    assert created.dtype == EXPECTED[name][0]
    assert created.device == runtime.device
    assert integers.dtype == torch.int64  # only floating-point defaults change
    assert torch.get_default_dtype() == f32
    assert torch.zeros(2).dtype == f32


def test_16_mixed_has_a_grad_scaler_and_bf16_mixed_none():
    runtime = runtime_for("16-mixed")
    runtime.launch()  # binds the precision to the device, which creates the scaler
    scaler = runtime.precision.scaler
    assert isinstance(scaler, torch.amp.GradScaler)
    assert scaler.is_enabled()
    assert scaler._device == "cpu"
    assert runtime.precision.compute_dtype == f16

    for name in ("bf16-mixed", "32-true", "bf16-true", "16-true", "64-true"):
        other = runtime_for(name)
        other.launch()
        assert getattr(other.precision, "scaler", None) is None, name
        assert other.precision.state_dict() == {}


def _train_one_step(runtime: Runtime) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Probe()
    model, optimizer = runtime.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    loss = model(*inputs()).float().pow(2).mean()
    runtime.backward(loss)
    optimizer.step()
    return model, optimizer


def test_scaler_state_round_trips_through_the_precision():
    source = runtime_for("16-mixed")
    _train_one_step(source)
    source.precision.scaler.update(new_scale=512.0)
    state = source.precision.state_dict()
    assert state["scale"] == 512.0

    target = runtime_for("16-mixed")
    target.launch()
    assert target.precision.state_dict()["scale"] == 65536.0
    target.precision.load_state_dict(state)

    assert target.precision.state_dict() == state
    assert target.precision.scaler.get_scale() == 512.0


def test_scaler_state_loaded_from_a_checkpoint_before_setup_is_kept(tmp_path):
    source = runtime_for("16-mixed")
    model, _ = _train_one_step(source)
    source.precision.scaler.update(new_scale=1024.0)
    source.save(tmp_path / "ckpt.pt", {"model": model, "precision": source.precision})

    target = runtime_for("16-mixed")  # not launched: the scaler does not exist yet
    target.load(tmp_path / "ckpt.pt", {"precision": target.precision}, strict=False)
    target.setup(Probe())

    assert target.precision.scaler.get_scale() == 1024.0


def test_clip_gradients_unscales_before_clipping_under_16_mixed():
    runtime = runtime_for("16-mixed")
    torch.manual_seed(0)
    model = Probe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer = runtime.setup(model, optimizer)
    parameters = list(model.parameters())

    runtime.backward(model(*inputs()).float().mean())
    scale = runtime.precision.scaler.get_scale()
    assert scale == 65536.0
    true_grads = [p.grad / scale for p in parameters]

    norm = runtime.clip_gradients(model, optimizer, max_norm=1e6)

    expected = torch.linalg.vector_norm(torch.stack([g.norm() for g in true_grads]))
    torch.testing.assert_close(norm, expected)
    for p, g in zip(parameters, true_grads, strict=True):
        torch.testing.assert_close(p.grad, g)
    before = [p.detach().clone() for p in parameters]
    optimizer.step()  # must not unscale a second time
    for p, b, g in zip(parameters, before, true_grads, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.5 * g)


def test_optimizer_step_unscales_under_16_mixed():
    runtime = runtime_for("16-mixed")
    torch.manual_seed(0)
    model = Probe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer = runtime.setup(model, optimizer)
    parameters = list(model.parameters())

    runtime.backward(model(*inputs()).float().mean())
    scale = runtime.precision.scaler.get_scale()
    true_grads = [p.grad / scale for p in parameters]
    before = [p.detach().clone() for p in parameters]
    optimizer.step()

    for p, b, g in zip(parameters, before, true_grads, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.5 * g)


class Passthrough(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x: object) -> object:
        return x


def _refuse(*args: object, **kwargs: object) -> object:
    raise AssertionError("precision work happened under 32-true")


def test_32_true_calls_the_module_with_no_precision_work(monkeypatch):
    runtime = runtime_for("32-true")
    inner = Passthrough()
    weight = inner.linear.weight
    assert runtime.precision.wraps_forward is False
    for name in ("convert_input", "convert_output", "forward_context"):
        monkeypatch.setattr(runtime.precision, name, _refuse)

    model = runtime.setup(inner)
    x = torch.randn(3, 2)

    assert model(x) is x  # not converted, not copied
    assert model.module.linear.weight is weight  # setup did not copy the parameters either


def test_precision_work_is_detected_where_there_is_some(monkeypatch):
    """The counterpart of the test above: the same probe sees bf16-true's conversion."""
    runtime = runtime_for("bf16-true")
    calls = []
    convert = runtime.precision.convert_input

    def recording(data):
        calls.append(data)
        return convert(data)

    monkeypatch.setattr(runtime.precision, "convert_input", recording)
    model = runtime.setup(Passthrough())
    output = model(torch.randn(3, 2))

    assert runtime.precision.wraps_forward is True
    assert len(calls) == 1
    assert output.dtype == f32  # back to the default dtype
