"""Accelerator checks: the class answers consistently, and on its first device tensors round-trip
bit-exactly, ``synchronize`` waits, autocast computes in each claimed dtype, memory statistics
have the documented types, and teardown leaves the device usable.

Everything except :func:`test_availability` needs a device: where the accelerator is not usable,
those checks are skipped with its ``unavailable_reason()``.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional

from switchyard import seed as _seed
from switchyard.accelerator import Accelerator
from switchyard.errors import DeviceSelectionError, SelectionError
from switchyard.runtime import Runtime
from switchyard.testing import problems
from switchyard.testing.capabilities import backend_problem
from switchyard.testing.compare import bit_difference, close_difference, flatten_state
from switchyard.testing.config import KitConfig, PrecisionCase, describe
from switchyard.testing.plugin import NOT_APPLICABLE, kit_of
from switchyard.testing.suite import fail

pytestmark = pytest.mark.switchyard_conformance("accelerator")

ROUND_TRIP_DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.complex64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
"""Every dtype must come back with the same bits; a device that refuses a dtype other than
float32 outright (MPS has no float64) has that dtype's check skipped with its error."""

REQUIRED_DTYPES = (torch.float32,)

ROUND_TRIP_SHAPE = (67, 61)

AUTOCAST_TOLERANCE = {torch.float16: (2e-3, 4e-3), torch.bfloat16: (1.6e-2, 3e-2)}
"""``(rtol, atol)`` of a layer under autocast against float32, for inputs, weights and biases in
[-1, 1] and 8 products per output (8 input features; 2 channels by a 2x2 or a 4-wide kernel);
other compute dtypes are only checked for dtype and finiteness."""

SEEDS = (1234, 4321)
"""The seeds of the seeding check: the first twice, then the second."""

SEED_DRAW = 256
"""Values of each random tensor the seeding check draws on the device."""

MEMORY_KEYS = ("allocated", "reserved", "peak_allocated", "total")
MEMORY_BLOCK = 4 * 1024 * 1024


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    kit = kit_of(metafunc.config)
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize(
            "dtype",
            ROUND_TRIP_DTYPES,
            ids=[str(d).removeprefix("torch.") for d in ROUND_TRIP_DTYPES],
        )
    if "autocast_case" in metafunc.fixturenames:
        cases = [c for c in kit.precision_cases if c.claimed and c.compute_dtype is not None]
        if not cases:
            # nothing claimed to autocast: the check does not apply (the report lists the
            # precisions considered and why each was declined); see NOT_APPLICABLE
            metafunc.parametrize(
                "autocast_case", [pytest.param(None, marks=getattr(pytest.mark, NOT_APPLICABLE))]
            )
            return
        metafunc.parametrize("autocast_case", cases, ids=[c.selector for c in cases])


@pytest.fixture(scope="module")
def accelerator_class(switchyard_kit: KitConfig) -> type[Accelerator]:
    registration = switchyard_kit.accelerator
    assert registration is not None
    missing = registration.entry.missing_requirements()
    if missing:
        pytest.skip(f"{describe(registration)} needs {', '.join(missing)}, which is not installed")
    try:
        cls = registration.entry.load()
    except Exception as error:
        fail(
            f"{describe(registration)}: factory {registration.entry.factory!r} cannot be "
            f"imported: {type(error).__name__}: {error}"
        )
    if not (isinstance(cls, type) and issubclass(cls, Accelerator)):
        fail(f"{describe(registration)}: factory {cls!r} is not an Accelerator subclass")
    return cls


@pytest.fixture(scope="module")
def device(accelerator_class: type[Accelerator], switchyard_kit: KitConfig) -> torch.device:
    """The accelerator's first device; skips where the accelerator is not usable."""
    reason = accelerator_class.unavailable_reason()
    if reason is not None:
        assert switchyard_kit.accelerator is not None
        pytest.skip(f"{describe(switchyard_kit.accelerator)} is not usable here: {reason}")
    try:
        index = accelerator_class.parse_devices(1)[0]
    except Exception as error:
        fail(f"parse_devices(1) failed on an available accelerator: {error}")
    return accelerator_class.get_device(index)


@pytest.fixture
def accelerator(switchyard_kit: KitConfig, device: torch.device) -> Iterator[Accelerator]:
    """An instance with ``setup_device`` done, as a process of a run would have it."""
    assert switchyard_kit.accelerator is not None
    instance: Accelerator = switchyard_kit.accelerator.entry.create()
    instance.setup_device(device)
    yield instance
    instance.teardown()


def test_availability(accelerator_class: type[Accelerator], record_property: Any) -> None:
    """``is_available()``, ``unavailable_reason()``, ``device_count()``, ``device_type``,
    ``distributed_backend`` and ``process_group_backend()`` agree with each other (runs without
    hardware)."""
    cls = accelerator_class
    problems = []
    # typed as Any: the point is to catch plugins that return what their annotations deny
    available: Any = cls.is_available()
    reason: Any = cls.unavailable_reason()
    count: Any = cls.device_count()
    record_property("available", available)
    record_property("unavailable_reason", reason)
    record_property("device_count", count)
    if not isinstance(available, bool):
        problems.append(f"is_available() returned {available!r}, not a bool")
    if available and reason is not None:
        problems.append(f"is_available() is True but unavailable_reason() says {reason!r}")
    if not available and (not isinstance(reason, str) or not reason.strip()):
        problems.append(f"is_available() is False but unavailable_reason() is {reason!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        problems.append(f"device_count() returned {count!r}, not a count")
    elif available and count < 1:
        problems.append("is_available() is True but device_count() is 0")
    device_type = getattr(cls, "device_type", None)
    if not isinstance(device_type, str) or not device_type:
        problems.append(f"device_type is {device_type!r}, not a torch device type string")
    elif available:
        try:
            torch.device(device_type)
        except RuntimeError as error:
            problems.append(f"torch does not know device_type {device_type!r}: {error}")
    backend: Any = cls.distributed_backend
    if backend is not None and not isinstance(backend, str):
        problems.append(f"distributed_backend is {backend!r}, not a string or None")
    try:
        group_backend: Any = cls.process_group_backend()
    except Exception as error:
        problems.append(f"process_group_backend() raised {type(error).__name__}: {error}")
    else:
        record_property("process_group_backend", group_backend)
        if group_backend is not None and not isinstance(group_backend, str):
            problems.append(f"process_group_backend() returned {group_backend!r}, not a string")
        elif backend is None and group_backend is not None:
            problems.append(
                f"distributed_backend is None (no multi-process strategy can run) but "
                f"process_group_backend() returns {group_backend!r}"
            )
    if available:
        auto = cls.auto_device_count()
        if isinstance(auto, bool) or not isinstance(auto, int) or auto < 1:
            problems.append(f"auto_device_count() returned {auto!r}, not a positive count")
    if problems:
        fail(f"{cls.__qualname__}: {'; '.join(problems)}")


def test_parse_devices(accelerator_class: type[Accelerator], device: torch.device) -> None:
    """``parse_devices`` agrees with ``device_count()``: ``"auto"``, ``1``, ``k`` and ``-1`` give
    that many distinct visible indices whose ``get_device`` has the right type; ``0``, ``-2``,
    ``True`` and ``"many"`` raise ``DeviceSelectionError``."""
    cls = accelerator_class
    count = cls.device_count()
    problems: list[str] = []

    def parse(value: Any) -> list[int] | None:
        try:
            indices = cls.parse_devices(value)
        except Exception as error:
            problems.append(f"parse_devices({value!r}) raised {type(error).__name__}: {error}")
            return None
        if not isinstance(indices, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in indices
        ):
            problems.append(f"parse_devices({value!r}) returned {indices!r}, not a list of ints")
            return None
        if len(set(indices)) != len(indices):
            problems.append(f"parse_devices({value!r}) returned a repeated index: {indices}")
        outside = [i for i in indices if not 0 <= i < count]
        if outside:
            problems.append(
                f"parse_devices({value!r}) returned {outside}, outside the {count} visible "
                "device(s)"
            )
        wrong = [i for i in indices if cls.get_device(i).type != cls.device_type]
        if wrong:
            problems.append(
                f"get_device({wrong[0]}) is {cls.get_device(wrong[0])}, not a "
                f"{cls.device_type} device"
            )
        return indices

    expected = {"auto": cls.auto_device_count(), 1: 1, "1": 1, -1: count}
    expected.update({k: k for k in range(2, min(count, 4) + 1)})
    expected.update({str(k): k for k in range(2, min(count, 4) + 1)})
    for value, length in expected.items():
        indices = parse(value)
        if indices is not None and len(indices) != length:
            problems.append(
                f"parse_devices({value!r}) returned {len(indices)} index(es), expected {length}"
            )
    for bad in (0, -2, True, "many"):
        try:
            cls.parse_devices(bad)
        except DeviceSelectionError:
            continue
        except Exception as error:
            problems.append(
                f"parse_devices({bad!r}) raised {type(error).__name__} instead of "
                f"DeviceSelectionError: {error}"
            )
        else:
            problems.append(
                f"parse_devices({bad!r}) was accepted; it must raise DeviceSelectionError"
            )
    if problems:
        fail(f"{cls.__qualname__} with {count} visible device(s): {'; '.join(problems)}")


def single_device_runtime(kit: KitConfig) -> Runtime:
    """A runtime of the accelerator under test on one device, in this process, with core's
    ``single_device`` strategy and float32."""
    assert kit.accelerator is not None
    return Runtime(
        accelerator=kit.selector(kit.accelerator),
        strategy="single_device",
        devices=1,
        num_nodes=1,
        precision="32-true",
        environment="local",
    )


def _auto_selection(
    kit: KitConfig, cls: type[Accelerator], devices: str | int
) -> tuple[dict[str, Any], str | None]:
    """What ``Runtime(accelerator=..., devices=devices)`` selects, for the report, and the
    problem with it (a selection that would only fail once its processes run), if any."""
    assert kit.accelerator is not None
    record: dict[str, Any] = {"devices": devices}
    what = f"Runtime(accelerator={kit.selector(kit.accelerator)!r}, devices={devices!r})"
    try:
        runtime = Runtime(
            accelerator=kit.selector(kit.accelerator),
            devices=devices,
            num_nodes=1,
            environment="local",
        )
    except SelectionError as error:
        # refusing before any process starts is a correct answer: say what it was
        record["refused"] = str(error)
        return record, None
    except Exception as error:
        return record, (
            f"{what} raised {type(error).__name__}: {error}; selection must choose a strategy "
            "or raise SelectionError"
        )
    plan = runtime.plan
    name = plan.names["strategy"]
    registration = runtime.registry.get("strategy", name)
    distributed = bool(getattr(getattr(registration, "entry", None), "distributed", False))
    expected = len(cls.parse_devices(devices))
    record.update(strategy=name, world_size=plan.world_size, distributed=distributed)
    if plan.world_size != expected:
        return record, (
            f"{what} plans {plan.world_size} process(es), but parse_devices({devices!r}) gives "
            f"{expected} device(s)"
        )
    if plan.world_size == 1:
        return record, None
    if not distributed:
        return record, (
            f"{what} selected strategy {name!r}, which runs one process, for "
            f"{plan.world_size} devices"
        )
    backend = cls.process_group_backend()
    record["process_group_backend"] = backend
    if backend is None:
        return record, (
            f"{what} selected the multi-process strategy {name!r} although the accelerator "
            "declares no process group backend (process_group_backend() is None): its "
            f"{plan.world_size} processes could not talk"
        )
    problem = backend_problem(backend, cls.device_type)
    if problem is not None:
        return record, (
            f"{what} selected strategy {name!r} on {plan.world_size} processes with the "
            f"accelerator's process group backend {backend!r}, but {problem}: the processes "
            "would start and then fail to create their process group. Declare the backend "
            "that takes the device's tensors (distributed_backend), or None where there is "
            "none, so that selection refuses before any process starts"
        )
    return record, None


def test_auto_devices(
    switchyard_kit: KitConfig,
    accelerator_class: type[Accelerator],
    device: torch.device,
    record_property: Any,
) -> None:
    """``devices="auto"`` means ``auto_device_count()`` devices, and a runtime asked for them
    either selects a strategy that runs that many processes (a distributed one for more than
    one, only where the accelerator has a process group backend that this torch build has and
    that takes its tensors) or refuses with ``SelectionError`` before any process starts. Where
    ``"auto"`` means one device but more are visible, the same holds for 2 devices."""
    cls = accelerator_class
    count = cls.auto_device_count()
    visible = cls.device_count()
    record_property("auto_device_count", count)
    record_property("device_count", visible)
    indices = cls.parse_devices("auto")
    if len(indices) != count:
        fail(
            f"{cls.__qualname__}: parse_devices('auto') gives {len(indices)} device(s), "
            f"auto_device_count() says {count}"
        )
    cases: list[str | int] = ["auto"]
    if count == 1:
        note = "devices='auto' means one device here (auto_device_count() == 1)"
        if visible >= 2:
            cases.append(2)
            note += ", so selection for several devices was checked with devices=2"
        else:
            note += (
                " and only one is visible: selection for several devices through 'auto' "
                "could not be observed on this machine"
            )
        record_property("note", note)
    selections = []
    for devices in cases:
        record, problem = _auto_selection(switchyard_kit, cls, devices)
        selections.append(record)
        if problem is not None:
            record_property("selections", selections)
            fail(f"{cls.__qualname__} with {count} device(s) for 'auto': {problem}")
    record_property("selections", selections)


def _optimizer_parameters(optimizer: Any) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def test_optimizer_created_before_setup(
    switchyard_kit: KitConfig, device: torch.device, record_property: Any
) -> None:
    """A model and optimizer created on the CPU before ``runtime.setup(model, optimizer)`` train
    on the device (``single_device``, one process): afterwards the optimizer holds exactly the
    parameters the set-up module holds, and training changes them and matches plain PyTorch
    on the CPU (losses and parameters within ``PARITY_RTOL``/``PARITY_ATOL``)."""
    rtol, atol = problems.PARITY_RTOL, problems.PARITY_ATOL
    record_property("tolerance", {"rtol": rtol, "atol": atol, "steps": problems.STEPS})
    runtime = single_device_runtime(switchyard_kit)
    prefix = f"on {device}, an optimizer created before runtime.setup(model, optimizer)"
    try:
        model = problems.regression_model()
        names = {id(p): n for n, p in model.named_parameters()}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.SGD(model.parameters(), lr=problems.LEARNING_RATE)
        wrapped, wrapped_optimizer = runtime.setup(model, optimizer)
        held = {id(p) for p in wrapped.parameters()}
        stepped = {id(p) for p in _optimizer_parameters(wrapped_optimizer)}
        record_property("parameters_replaced_by_setup", len(set(names) - held))
        if stepped != held:
            stale = sorted(names.get(i, "(not the model's)") for i in stepped - held)
            fail(
                f"{prefix} holds {len(stepped - held)} parameter(s) the set-up module does not "
                f"({', '.join(stale[:6])}) and misses {len(held - stepped)} it does: "
                "optimizer.step() would update tensors the model does not compute with"
            )
        x, y = problems.regression_batch(1)
        x, y = x.to(runtime.device), y.to(runtime.device)
        losses = []
        for _ in range(problems.STEPS):
            loss = nn.functional.mse_loss(wrapped(x), y)
            wrapped_optimizer.zero_grad()
            runtime.backward(loss, model=wrapped)
            wrapped_optimizer.step()
            losses.append(float(loss.item()))
        after = flatten_state(runtime.strategy.module_state_dict(wrapped.module))
    finally:
        runtime.teardown()
    unchanged = [n for n, p in before.items() if n in after and torch.equal(after[n], p)]
    if unchanged:
        fail(
            f"{prefix}: after {problems.STEPS} steps parameter(s) {', '.join(unchanged)} did not "
            "change: the optimizer does not step what the module holds"
        )
    want_losses, want_state = problems.reference_training(1)
    problem = close_difference(
        "loss of each step", torch.tensor(losses), torch.tensor(want_losses), rtol, atol
    )
    for key, want in want_state.items():
        if problem is None:
            problem = close_difference(f"parameter {key!r}", after[key], want, rtol, atol)
    if problem is not None:
        fail(f"{prefix} does not train as plain PyTorch on the CPU does: {problem}")


@contextlib.contextmanager
def _restored_rng() -> Iterator[None]:
    """Leave the kit's process as it was: the host generators and the seed variables that
    ``seed_everything`` exports."""
    variables = {k: os.environ.get(k) for k in (_seed.ENV_SEED, _seed.ENV_SEED_WORKERS)}
    python_state = random.getstate()
    torch_state = torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        torch.random.set_rng_state(torch_state)
        for key, value in variables.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_seeding(
    switchyard_kit: KitConfig,
    accelerator_class: type[Accelerator],
    device: torch.device,
    record_property: Any,
) -> None:
    """``switchyard.seed_everything(n)`` reaches the device's generator (``torch.manual_seed``
    plus the accelerator's ``manual_seed``): random tensors created on the device after it are
    the same for the same seed, whatever was drawn in between, and differ for another seed."""
    overridden = accelerator_class.manual_seed is not Accelerator.manual_seed
    record_property("manual_seed", "overridden" if overridden else "Accelerator's default")
    record_property("seeds", list(SEEDS))
    runtime = single_device_runtime(switchyard_kit)
    with _restored_rng():
        try:
            runtime.launch()
            target = runtime.device

            def draw(seed: int) -> torch.Tensor:
                _seed.seed_everything(seed)
                uniform = torch.rand(SEED_DRAW, device=target)
                normal = torch.randn(SEED_DRAW, device=target)
                return torch.cat([uniform.cpu(), normal.cpu()])

            first = draw(SEEDS[0])
            torch.rand(SEED_DRAW, device=target)  # the generator moves on in between
            again = draw(SEEDS[0])
            other = draw(SEEDS[1])
        finally:
            runtime.teardown()
    problem = bit_difference(first, again, ("first", "second"))
    if problem is not None:
        fail(
            f"after seed_everything({SEEDS[0]}) twice, random tensors created on {device} "
            f"differ ({problem}): the seed does not reach the device's generator. "
            "torch.manual_seed seeds the generators of the device types torch registers; an "
            "accelerator whose device has a generator of its own must seed it in manual_seed"
        )
    if torch.equal(first, other):
        fail(
            f"seed_everything({SEEDS[0]}) and seed_everything({SEEDS[1]}) gave the same random "
            f"tensors on {device}: the device's generator does not take the seed"
        )


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...] = ROUND_TRIP_SHAPE) -> torch.Tensor:
    """Uniformly random bit patterns of ``dtype``: every exponent, subnormals, infinities,
    NaNs with payloads and -0.0 included."""
    generator = torch.Generator().manual_seed(1000 + ROUND_TRIP_DTYPES.index(dtype))
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if dtype.is_floating_point or dtype.is_complex:
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[
            torch.empty((), dtype=dtype).element_size()
        ]
        info = torch.iinfo(bits)
        raw = torch.randint(info.min, info.max, shape, dtype=bits, generator=generator)
        return raw.view(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, dtype=dtype, generator=generator)


def _round_trip(
    accelerator: Accelerator, device: torch.device, sent: torch.Tensor, non_blocking: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    on_device = sent.to(device, non_blocking=non_blocking)
    accelerator.synchronize(device)
    back = on_device.to("cpu", non_blocking=non_blocking)
    accelerator.synchronize(device)
    return on_device, back


def test_round_trip(dtype: torch.dtype, accelerator: Accelerator, device: torch.device) -> None:
    """A tensor of random bit patterns copied to the device and back is bit-for-bit identical,
    contiguous or not, blocking or not."""
    sent = random_tensor(dtype)
    name = str(dtype).removeprefix("torch.")
    try:
        on_device, back = _round_trip(accelerator, device, sent, non_blocking=False)
    except Exception as error:
        if dtype in REQUIRED_DTYPES:
            fail(f"copying a {name} tensor to {device} failed: {type(error).__name__}: {error}")
        pytest.skip(f"{device.type} does not take {name} tensors: {type(error).__name__}: {error}")
    if on_device.device.type != device.type:
        fail(f"after .to({device}) the tensor is on {on_device.device}")
    problem = bit_difference(sent, back)
    if problem is None:
        _, back = _round_trip(accelerator, device, sent, non_blocking=True)
        problem = bit_difference(sent, back)
        if problem is not None:
            problem = f"with non_blocking=True and synchronize(): {problem}"
    if problem is None:
        view = sent.t()
        _, back = _round_trip(accelerator, device, view, non_blocking=False)
        problem = bit_difference(view, back)
        if problem is not None:
            problem = f"as a transposed (non-contiguous) view: {problem}"
    if problem is not None:
        fail(
            f"a {name} tensor of shape {ROUND_TRIP_SHAPE} copied to {device} and back did not "
            f"come back bit-exact: {problem}"
        )


def test_round_trip_on_every_device(
    accelerator_class: type[Accelerator], accelerator: Accelerator, record_property: Any
) -> None:
    """A float32 tensor round-trips bit-exactly through each visible device (up to 8)."""
    devices = {
        str(d): d
        for d in (accelerator_class.get_device(i) for i in accelerator_class.parse_devices(-1))
    }
    chosen = list(devices.values())[:8]
    record_property("devices", [str(d) for d in chosen])
    sent = random_tensor(torch.float32)
    for target in chosen:
        _, back = _round_trip(accelerator, target, sent, non_blocking=False)
        problem = bit_difference(sent, back)
        if problem is not None:
            fail(f"a float32 tensor copied to {target} and back: {problem}")


def test_synchronize(accelerator: Accelerator, device: torch.device) -> None:
    """``synchronize(device)`` and ``synchronize()`` return once queued work is done: a result
    copied back without blocking is complete and exact after them."""
    values = torch.arange(1 << 16, dtype=torch.float32).reshape(256, 256)
    on_device = values.to(device)
    result = on_device * 2 + 1  # exact in float32: every value stays below 2**24
    accelerator.synchronize(device)
    accelerator.synchronize()
    host = result.to("cpu", non_blocking=True)
    accelerator.synchronize(device)
    problem = bit_difference(values * 2 + 1, host)
    if problem is not None:
        fail(f"after synchronize({device}) the copied result is incomplete or wrong: {problem}")


def _uniform(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator) * 2 - 1


class _Matmul(nn.Module):
    """``x @ w.t()`` with a fixed ``w``: the matrix product alone, without a bias."""

    w: torch.Tensor

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.linear(x, self.w)


AutocastLayer = tuple[nn.Module, torch.Tensor, torch.Tensor]
"""A layer, its input and its float32 result on the CPU."""


def _autocast_layers(device: torch.device) -> tuple[dict[str, AutocastLayer], dict[str, str]]:
    """The layers the autocast check runs, on ``device``, and why a convolution was left out.
    Every output sums 8 products of values in [-1, 1] (and a bias), as ``AUTOCAST_TOLERANCE``
    assumes. The convolution is a ``Conv2d``, or a ``Conv1d`` where the device does not run
    2-d convolutions even in float32."""
    generator = torch.Generator().manual_seed(7)
    x = _uniform(generator, 16, 8)
    w = _uniform(generator, 8, 8)
    bias = _uniform(generator, 8)
    linear = nn.Linear(8, 8)
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(bias)
    layers: dict[str, AutocastLayer] = {
        "matmul": (_Matmul(w).to(device), x, x @ w.t()),
        "nn.Linear with bias": (linear.to(device), x, functional.linear(x, w, bias)),
    }
    left_out: dict[str, str] = {}
    convolutions: list[tuple[str, nn.Module, torch.Tensor]] = [
        ("nn.Conv2d", nn.Conv2d(2, 4, kernel_size=2), _uniform(generator, 2, 2, 5, 5)),
        ("nn.Conv1d", nn.Conv1d(2, 4, kernel_size=4), _uniform(generator, 2, 2, 9)),
    ]
    for name, conv, data in convolutions:
        with torch.no_grad():
            for parameter in conv.parameters():
                parameter.copy_(_uniform(generator, *parameter.shape))
            want = conv(data)
        try:  # in float32, without autocast: whether the device has the layer at all
            with torch.no_grad():
                conv.to(device)(data.to(device)).cpu()
        except Exception as error:
            left_out[name] = f"{device.type} does not run it: {type(error).__name__}: {error}"
            continue
        layers[name] = (conv, data, want)
        break
    return layers, left_out


def test_autocast(
    autocast_case: PrecisionCase,
    device: torch.device,
    accelerator: Accelerator,
    record_property: Any,
) -> None:
    """Under a claimed mixed precision's ``forward_context()`` autocast is on for the device type
    and a matrix product, an ``nn.Linear`` with bias and a convolution (``nn.Conv2d``, or
    ``nn.Conv1d`` where the device has no 2-d convolution) each compute in the precision's dtype,
    close to float32 (tolerance in ``AUTOCAST_TOLERANCE``); it is off again afterwards. The
    report records the dtype each layer really computed in."""
    case = autocast_case
    dtype = case.compute_dtype
    assert dtype is not None
    precision = case.registration.entry.create()
    precision.bind(device)
    layers, left_out = _autocast_layers(device)
    outputs: dict[str, torch.Tensor] = {}
    errors: dict[str, str] = {}
    with precision.forward_context(), torch.no_grad():
        enabled = torch.is_autocast_enabled(device.type)
        for name, (layer, data, _) in layers.items():
            try:
                outputs[name] = layer(data.to(device))
            except Exception as error:
                errors[name] = f"{type(error).__name__}: {error}"
    after = torch.is_autocast_enabled(device.type)
    record_property(
        "computed_dtypes",
        {name: str(out.dtype).removeprefix("torch.") for name, out in outputs.items()},
    )
    if left_out:
        record_property("left_out", left_out)
    prefix = f"precision {case.name!r} on {device}"
    if not enabled:
        fail(
            f"{prefix}: autocast is not enabled for device type {device.type!r} inside "
            "forward_context()"
        )
    if errors:
        fail(
            f"{prefix}: under forward_context() "
            + "; ".join(f"{name} raised {error}" for name, error in errors.items())
        )
    wrong = {name: out.dtype for name, out in outputs.items() if out.dtype != dtype}
    if wrong:
        computed = ", ".join(f"{name} computed in {got}" for name, got in wrong.items())
        covered = [name for name in outputs if name not in wrong]
        fail(
            f"{prefix} claims to compute in {dtype}, but under forward_context() {computed}"
            + (f" (only {', '.join(covered)} in {dtype})" if covered else "")
            + f": autocast for device type {device.type!r} does not cover "
            + ("it" if len(wrong) == 1 else "them")
            + ", so the precision does not do there what it claims"
        )
    if after:
        fail(f"{prefix}: autocast is still enabled after forward_context() exited")
    if dtype in AUTOCAST_TOLERANCE:
        rtol, atol = AUTOCAST_TOLERANCE[dtype]
        record_property("tolerance", {"rtol": rtol, "atol": atol})
    for name, out in outputs.items():
        result = out.float().cpu()
        if not bool(torch.isfinite(result).all()):
            fail(f"{prefix}: the autocast result of {name} holds non-finite values")
        if dtype in AUTOCAST_TOLERANCE:
            problem = close_difference(f"{name} output", result, layers[name][2], rtol, atol)
            if problem is not None:
                fail(f"{prefix}: autocast result is not close to float32: {problem}")


def test_memory_stats(accelerator: Accelerator, device: torch.device, record_property: Any) -> None:
    """``memory_stats`` returns byte counts (non-negative ints) whose documented keys agree
    (``allocated <= peak_allocated``, ``allocated <= reserved <= total``), and ``allocated``
    grows by at least a 4 MiB block allocated on the device; ``empty_cache()`` works."""
    stats = accelerator.memory_stats(device)
    if not isinstance(stats, dict):
        fail(f"memory_stats({device}) returned a {type(stats).__name__}, not a dict")
    record_property("memory_stats_keys", sorted(stats))
    problems = [
        f"{key!r}: {value!r} is not a non-negative int number of bytes"
        for key, value in stats.items()
        if not isinstance(key, str)
        or isinstance(value, bool)
        or not isinstance(value, int)
        or value < 0
    ]
    if problems:
        fail(f"memory_stats({device}): {'; '.join(problems)}")

    def at_most(low: str, high: str) -> None:
        if low in stats and high in stats and stats[low] > stats[high]:
            problems.append(f"{low}={stats[low]} exceeds {high}={stats[high]}")

    at_most("allocated", "peak_allocated")
    at_most("allocated", "reserved")
    at_most("reserved", "total")
    at_most("peak_allocated", "total")
    if "allocated" in stats:
        block = torch.empty(MEMORY_BLOCK, dtype=torch.uint8, device=device)
        grown = accelerator.memory_stats(device).get("allocated", 0) - stats["allocated"]
        del block
        if grown < MEMORY_BLOCK:
            problems.append(
                f"'allocated' grew by {grown} bytes for a block of {MEMORY_BLOCK} bytes"
            )
    accelerator.empty_cache()
    if problems:
        fail(f"memory_stats({device}): {'; '.join(problems)}")


def test_teardown_leaves_device_usable(
    switchyard_kit: KitConfig, accelerator_class: type[Accelerator], device: torch.device
) -> None:
    """After ``teardown()`` tensors made before it are still readable, new ones can be made, and
    a new instance can ``setup_device`` again (a second run in one process)."""
    registration = switchyard_kit.accelerator
    assert registration is not None
    first: Accelerator = registration.entry.create()
    first.setup_device(device)
    kept = torch.full((8,), 3.0, device=device)
    first.teardown()
    problems = []
    if not torch.equal((kept * 2).cpu(), torch.full((8,), 6.0)):
        problems.append("a tensor created before teardown() computes wrongly after it")
    if float(torch.ones(4, device=device).sum().item()) != 4.0:
        problems.append("a tensor created after teardown() computes wrongly")
    second: Accelerator = registration.entry.create()
    second.setup_device(device)
    if not torch.equal(torch.arange(3, device=device).cpu(), torch.arange(3)):
        problems.append("after a second setup_device() the device computes wrongly")
    second.teardown()
    if problems:
        fail(f"{device}: {'; '.join(problems)}")
