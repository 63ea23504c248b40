"""The MPS accelerator: one device, one process, and the precisions Metal lacks, all refused at
selection, before any process starts.

This machine is not a Mac. Tests named ``test_fake_*`` pretend that torch's MPS backend is
built and available by replacing ``torch.backends.mps`` queries (each says so in its
docstring); the others run for real, here or, where marked, only on Apple silicon.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import torch

from switchyard import DeviceSelectionError, PluginRegistry, Runtime, SelectionError
from switchyard.errors import PluginConflictError
from switchyard.selection import select
from switchyard_mps.accelerator import MPSAccelerator

HAS_MPS = torch.backends.mps.is_built() and torch.backends.mps.is_available()
needs_mps = pytest.mark.skipif(not HAS_MPS, reason="needs Apple silicon and torch built with MPS")


def fake_mps(monkeypatch: pytest.MonkeyPatch, macos: tuple[int, int] = (15, 0)) -> None:
    """Make this machine's torch look like a macOS ``macos`` build with MPS available."""
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos >= (major, minor)
    )


@pytest.fixture
def no_processes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records any attempt to start a process (none may start during selection)."""
    started: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        started.append(args)
        raise AssertionError(f"a process was started during selection: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(torch.multiprocessing, "start_processes", refuse)
    return started


# -- real ---------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_MPS, reason="checks what a machine without MPS reports")
def test_unavailable_here_says_why() -> None:
    """Real: this torch has no MPS, and the accelerator says what it needs."""
    assert MPSAccelerator.is_available() is False
    assert MPSAccelerator.device_count() == 0
    reason = MPSAccelerator.unavailable_reason()
    assert reason is not None
    assert "Apple silicon" in reason
    assert torch.__version__ in reason


def test_declares_one_process_and_no_sharding() -> None:
    """Real: what the accelerator declares, which selection reads."""
    assert MPSAccelerator.distributed_backend is None
    assert MPSAccelerator.process_group_backend() is None
    assert MPSAccelerator.supports_sharding is False
    assert MPSAccelerator.auto_device_count() == 1
    assert MPSAccelerator.get_device(0) == torch.device("mps", 0)


# -- fakes --------------------------------------------------------------------------------


@pytest.mark.parametrize("devices", [1, "1", -1, "-1", "auto", "0", [0], (0,)])
def test_fake_one_device(monkeypatch: pytest.MonkeyPatch, devices: Any) -> None:
    """Fake: MPS available (this machine is not a Mac)."""
    fake_mps(monkeypatch)
    assert MPSAccelerator.parse_devices(devices) == [0]


@pytest.mark.parametrize("devices", [2, "2", [0, 1], "0,1", [1], 0, True, "many"])
def test_fake_more_than_one_device_refused(monkeypatch: pytest.MonkeyPatch, devices: Any) -> None:
    """Fake: MPS available (this machine is not a Mac). Anything but the one GPU is refused,
    saying what exists and what to do."""
    fake_mps(monkeypatch)
    with pytest.raises(DeviceSelectionError) as caught:
        MPSAccelerator.parse_devices(devices)
    message = str(caught.value)
    assert f"devices={devices!r} is not available on MPS" in message
    assert "one MPS GPU (index 0)" in message
    assert "devices=1" in message
    assert "accelerator='cpu'" in message


def test_fake_selection_picks_single_device(
    monkeypatch: pytest.MonkeyPatch, no_processes: list[Any]
) -> None:
    """Fake: MPS available (this machine is not a Mac): by name and by auto (priority 90 over
    the CPU's 0), one device with single_device."""
    fake_mps(monkeypatch)
    runtime = Runtime(accelerator="mps")
    assert runtime.plan.names["accelerator"] == "mps"
    assert runtime.plan.names["strategy"] == "single_device"
    assert runtime.plan.devices == [torch.device("mps", 0)]
    assert select(PluginRegistry(), accelerator="auto").names["accelerator"] == "mps"
    assert no_processes == []


def test_fake_gpu_alias_resolves_to_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: MPS available (this machine is not a Mac): "gpu" means mps there."""
    fake_mps(monkeypatch)
    try:
        plan = select(PluginRegistry(), accelerator="gpu")
    except PluginConflictError as error:
        pytest.skip(f"selection does not resolve shared aliases yet: {error}")
    assert plan.names["accelerator"] == "mps"


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "fsdp"])
def test_fake_multi_process_strategies_refused_before_any_process(
    monkeypatch: pytest.MonkeyPatch, no_processes: list[Any], strategy: str
) -> None:
    """Fake: MPS available (this machine is not a Mac). DDP and FSDP are refused at
    Runtime(...), naming the strategy, the accelerator, why, and what can run instead."""
    pytest.importorskip("switchyard_fsdp" if strategy == "fsdp" else "switchyard_ddp")
    fake_mps(monkeypatch)
    with pytest.raises(SelectionError) as caught:
        Runtime(accelerator="mps", strategy=strategy, devices=1)
    message = str(caught.value)
    assert f"strategy {strategy!r}" in message
    assert "accelerator 'mps' declares no process group backend" in message
    assert "Strategies that can run on accelerator 'mps'" in message
    assert "single_device" in message
    assert no_processes == []


def test_fake_auto_strategy_for_two_devices_refused(
    monkeypatch: pytest.MonkeyPatch, no_processes: list[Any]
) -> None:
    """Fake: MPS available (this machine is not a Mac): two devices are refused at once."""
    fake_mps(monkeypatch)
    with pytest.raises(DeviceSelectionError, match="a Mac has one MPS GPU"):
        Runtime(accelerator="mps", devices=2)
    assert no_processes == []


@pytest.mark.parametrize(
    ("precision", "macos", "words"),
    [
        (
            "64-true",
            (15, 0),
            ["keeps tensors in float64, which Metal does not have", "use 32-true"],
        ),
        ("bf16-mixed", (13, 5), ["bfloat16, which MPS supports from macOS 14", "Use 16-mixed"]),
        ("bf16-true", (13, 5), ["bfloat16, which MPS supports from macOS 14"]),
    ],
)
def test_fake_precisions_metal_lacks_are_refused(
    monkeypatch: pytest.MonkeyPatch,
    no_processes: list[Any],
    precision: str,
    macos: tuple[int, int],
    words: list[str],
) -> None:
    """Fake: MPS available on the given macOS (this machine is not a Mac)."""
    fake_mps(monkeypatch, macos)
    with pytest.raises(SelectionError) as caught:
        Runtime(accelerator="mps", precision=precision)
    message = str(caught.value)
    assert f"precision {precision!r} cannot run on accelerator 'mps'" in message
    for word in words:
        assert word in message
    assert no_processes == []


@pytest.mark.parametrize(
    ("precision", "macos"),
    [("32-true", (13, 0)), ("16-mixed", (13, 0)), ("16-true", (13, 0)), ("bf16-mixed", (14, 0)),
     ("bf16-true", (15, 0))],
)  # fmt: skip
def test_fake_precisions_accepted(
    monkeypatch: pytest.MonkeyPatch, precision: str, macos: tuple[int, int]
) -> None:
    """Fake: MPS available on the given macOS (this machine is not a Mac)."""
    fake_mps(monkeypatch, macos)
    assert Runtime(accelerator="mps", precision=precision).precision.name == precision


def test_fake_built_but_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: torch built with MPS on a Mac where Metal finds no GPU (this machine is neither)."""
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    reason = MPSAccelerator.unavailable_reason()
    assert reason is not None
    assert "built with MPS but finds no Metal GPU" in reason
    assert "Rosetta" in reason


# -- real hardware ------------------------------------------------------------------------


@needs_mps
def test_mps_trains_one_step() -> None:
    """Real MPS: a set-up module computes on the GPU and steps."""
    runtime = Runtime(accelerator="mps")
    model, optimizer = runtime.setup(
        torch.nn.Linear(4, 1), torch.optim.SGD(torch.nn.Linear(4, 1).parameters(), lr=0.1)
    )
    loss = model(torch.randn(8, 4, device=runtime.device)).square().mean()
    runtime.backward(loss)
    optimizer.step()
    assert next(model.parameters()).device.type == "mps"
    assert runtime.accelerator.memory_stats(runtime.device)["allocated"] > 0
