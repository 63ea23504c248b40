"""Precision checks, on one device of the hardware accelerator through a real ``Runtime``:
parameters, gradients and outputs have the precision's dtypes, and its state (a gradient
scaler's) survives a checkpoint round trip.

The precisions checked are those named with ``--switchyard-precision``, or else every installed
precision the accelerator claims. A requested precision the accelerator declines is skipped
with its reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch
from torch import nn

from switchyard.checkpoint import atomic_save, load_file
from switchyard.errors import CheckpointError
from switchyard.precision import Precision
from switchyard.runtime import Runtime
from switchyard.testing import problems
from switchyard.testing.compare import flatten_state, state_difference
from switchyard.testing.config import KitConfig, PrecisionCase
from switchyard.testing.plugin import kit_of
from switchyard.testing.suite import fail

pytestmark = pytest.mark.switchyard_conformance("precision")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = kit_of(metafunc.config).precision_cases
        metafunc.parametrize("case", cases, ids=[c.selector for c in cases])


def _fail(case: PrecisionCase, message: str) -> NoReturn:
    fail(f"precision {case.name!r}: {message}")


@pytest.fixture
def runtime(case: PrecisionCase, switchyard_kit: KitConfig) -> Iterator[Runtime]:
    """A single-device runtime on the hardware accelerator with the precision."""
    if case.claimed is None:
        if case.error:
            _fail(case, str(case.reason))
        pytest.skip(f"precision {case.name!r} cannot be checked here: {case.reason}")
    if not case.claimed:
        pytest.skip(f"precision {case.name!r} is not supported here: {case.reason}")
    hardware = switchyard_kit.hardware
    assert hardware is not None
    cls = hardware.entry.load()
    reason = cls.unavailable_reason()
    if reason is not None:
        pytest.skip(f"accelerator {hardware.entry.name!r} is not usable here: {reason}")
    runtime = Runtime(
        accelerator=switchyard_kit.selector(hardware),
        strategy="single_device",
        devices=1,
        precision=case.selector,
    )
    try:
        yield runtime
    finally:
        runtime.teardown()


def _setup(runtime: Runtime) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    model = problems.regression_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=problems.LEARNING_RATE)
    wrapped, wrapped_optimizer = runtime.setup(model, optimizer)
    x, y = problems.regression_batch(1)
    return wrapped, wrapped_optimizer, x.to(runtime.device), y.to(runtime.device)


def _floating(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.named_parameters() if torch.is_floating_point(p)}


def test_parameter_and_output_dtypes(case: PrecisionCase, runtime: Runtime) -> None:
    """Modules made under ``init_module()`` or set up have ``param_dtype`` parameters on the
    device; outputs come back in the default dtype (float32), or in float64 when the
    parameters are float64; the loss is finite and every gradient has its parameter's dtype."""
    precision: Precision = runtime.precision
    want = precision.param_dtype
    found = []
    with runtime.init_module():
        created = nn.Linear(6, 3)
    for name, p in _floating(created).items():
        if p.dtype != want or p.device.type != runtime.device.type:
            found.append(
                f"a module created under init_module() has {name} as {p.dtype} on {p.device}, "
                f"expected {want} on {runtime.device}"
            )
    model, optimizer, x, y = _setup(runtime)
    for name, p in _floating(model.module).items():
        if p.dtype != want:
            found.append(f"after setup() parameter {name} is {p.dtype}, expected {want}")
    output = model(x)
    expected = torch.float64 if want == torch.float64 else torch.get_default_dtype()
    if output.dtype != expected:
        found.append(f"the set-up module returned {output.dtype}, expected {expected}")
    loss = nn.functional.mse_loss(output.float(), y)
    runtime.backward(loss, model=model)
    for name, p in _floating(model.module).items():
        if p.grad is None:
            found.append(f"parameter {name} has no gradient after runtime.backward()")
        elif p.grad.dtype != p.dtype:
            found.append(f"the gradient of {name} is {p.grad.dtype}, its parameter {p.dtype}")
    optimizer.step()
    if not bool(torch.isfinite(loss.detach()).all()):
        found.append(f"the loss is not finite: {loss.item()}")
    if found:
        _fail(case, "; ".join(found))


def test_state_round_trip(case: PrecisionCase, runtime: Runtime, tmp_path: Path) -> None:
    """``state_dict()`` after training (including a step with non-finite gradients, which makes
    a gradient scaler back off) is a dict that a ``weights_only`` checkpoint keeps, and a fresh
    instance bound to the device restores it identically."""
    model, optimizer, x, y = _setup(runtime)
    for scale in (1.0, float("inf")):
        loss = nn.functional.mse_loss(model(x).float(), y) * scale
        optimizer.zero_grad()
        runtime.backward(loss, model=model)
        optimizer.step()
    state = runtime.precision.state_dict()
    if not isinstance(state, dict):
        _fail(case, f"state_dict() returned a {type(state).__name__}, not a dict")
    path = atomic_save({"precision": state}, tmp_path / "precision.pt")
    try:
        loaded = load_file(path, weights_only=True)["precision"]
    except CheckpointError as error:
        _fail(case, f"its state_dict() cannot be loaded with weights_only=True: {error}")
    fresh = case.registration.entry.create()
    fresh.bind(runtime.device)
    fresh.load_state_dict(loaded)
    problem = state_difference(flatten_state(fresh.state_dict()), flatten_state(state))
    if problem is not None:
        _fail(
            case,
            f"a fresh instance given load_state_dict(state) reports a different "
            f"state_dict(): {problem}",
        )
