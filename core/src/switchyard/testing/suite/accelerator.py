"""Accelerator checks: the class answers consistently, and on its first device tensors round-trip
bit-exactly, ``synchronize`` waits, autocast computes in each claimed dtype, memory statistics
have the documented types, and teardown leaves the device usable.

Everything except :func:`test_availability` needs a device: where the accelerator is not usable,
those checks are skipped with its ``unavailable_reason()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.nn import functional

from switchyard.accelerator import Accelerator
from switchyard.errors import DeviceSelectionError
from switchyard.testing.compare import bit_difference, close_difference
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
"""``(rtol, atol)`` of a linear layer under autocast against float32, for inputs in [-1, 1] and
8 input features; other compute dtypes are only checked for dtype and finiteness."""

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
    """``is_available()``, ``unavailable_reason()``, ``device_count()``, ``device_type`` and
    ``distributed_backend`` agree with each other (runs without hardware)."""
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


def test_autocast(
    autocast_case: PrecisionCase,
    device: torch.device,
    accelerator: Accelerator,
    record_property: Any,
) -> None:
    """Under a claimed mixed precision's ``forward_context()`` autocast is on for the device type
    and a linear layer computes in the precision's dtype, close to float32 (tolerance in
    ``AUTOCAST_TOLERANCE``); it is off again afterwards."""
    case = autocast_case
    dtype = case.compute_dtype
    assert dtype is not None
    precision = case.registration.entry.create()
    precision.bind(device)
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(16, 8, generator=generator) * 2 - 1
    w = torch.rand(8, 8, generator=generator) * 2 - 1
    with precision.forward_context():
        enabled = torch.is_autocast_enabled(device.type)
        y = functional.linear(x.to(device), w.to(device))
    after = torch.is_autocast_enabled(device.type)
    prefix = f"precision {case.name!r} on {device}"
    if not enabled:
        fail(
            f"{prefix}: autocast is not enabled for device type {device.type!r} inside "
            "forward_context()"
        )
    if y.dtype != dtype:
        fail(
            f"{prefix}: a linear layer under forward_context() computed in {y.dtype}, not "
            f"{dtype}: autocast did not take effect on this device type"
        )
    if after:
        fail(f"{prefix}: autocast is still enabled after forward_context() exited")
    result = y.float().cpu()
    if not bool(torch.isfinite(result).all()):
        fail(f"{prefix}: the autocast result holds non-finite values")
    if dtype in AUTOCAST_TOLERANCE:
        rtol, atol = AUTOCAST_TOLERANCE[dtype]
        record_property("tolerance", {"rtol": rtol, "atol": atol})
        problem = close_difference("linear output", result, x @ w.t(), rtol, atol)
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
