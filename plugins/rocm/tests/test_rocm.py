"""The ROCm accelerator: when it applies (and cuda steps aside), parsing, visibility, selection.

This machine has a CPU build of torch and no AMD GPU. Tests named ``test_fake_*`` pretend to be
a ROCm (or CUDA) build by replacing ``torch.version`` and torch's device count (each says so in
its docstring); the others run for real, here or, where marked, only on a ROCm machine.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from switchyard import DeviceSelectionError, PluginRegistry, Runtime, SelectionError
from switchyard.cli import plugins_report
from switchyard.errors import PluginConflictError
from switchyard.selection import select
from switchyard_rocm.accelerator import ROCmAccelerator, hip_version

HAS_ROCM_GPU = hip_version() is not None and torch.cuda.device_count() > 0
needs_rocm_gpu = pytest.mark.skipif(
    not HAS_ROCM_GPU, reason="needs a ROCm build of torch and an AMD GPU"
)
VISIBILITY = ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")


def fake_rocm(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Make this CPU-only torch look like a ROCm 6.2 build that sees ``count`` AMD GPUs."""
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    for name in VISIBILITY:
        monkeypatch.delenv(name, raising=False)


def accelerator_entries() -> dict[str, dict[str, Any]]:
    report = plugins_report(PluginRegistry())
    return {e["name"]: e for e in report["entries"] if e["kind"] == "accelerator"}


# -- real ---------------------------------------------------------------------------------


@pytest.mark.skipif(hip_version() is not None, reason="checks what a non-ROCm torch reports")
def test_unavailable_without_a_rocm_build() -> None:
    """Real: this torch is not a ROCm build, and the accelerator says so."""
    assert ROCmAccelerator.is_available() is False
    assert ROCmAccelerator.device_count() == 0
    reason = ROCmAccelerator.unavailable_reason()
    assert reason is not None
    assert "torch.version.hip is not set" in reason
    with pytest.raises(SelectionError, match="accelerator 'rocm' is installed but cannot be used"):
        Runtime(accelerator="rocm")


def test_declares_device_type_cuda_and_rccl() -> None:
    """Real: ROCm tensors are cuda tensors; RCCL is torch's "nccl" backend there."""
    assert ROCmAccelerator.device_type == "cuda"
    assert ROCmAccelerator.process_group_backend() == "cpu:gloo,cuda:nccl"
    assert ROCmAccelerator.supports_sharding is True
    assert ROCmAccelerator.forks_after_init is False
    assert ROCmAccelerator.get_device(1) == torch.device("cuda", 1)


# -- fakes --------------------------------------------------------------------------------


def test_fake_rocm_build_applies_and_cuda_steps_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a ROCm build seeing 2 AMD GPUs (this machine has a CPU build). `switchyard
    plugins` says rocm applies and why cuda does not."""
    fake_rocm(monkeypatch, 2)
    assert ROCmAccelerator.is_available() is True
    assert ROCmAccelerator.unavailable_reason() is None
    entries = accelerator_entries()
    if "cuda" in entries:
        assert entries["cuda"]["usable"] is False
        assert "this torch is a ROCm build" in entries["cuda"]["reason"]
        assert "the rocm accelerator applies" in entries["cuda"]["reason"]
    rocm = entries["rocm"]
    assert rocm["usable"] is True, rocm
    assert rocm["reason"] is None
    assert rocm["aliases"] == ["gpu"]
    assert rocm["priority"] == 100


def test_fake_cuda_build_says_cuda_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a CUDA 12.6 build (this machine has a CPU build): rocm names cuda instead."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert ROCmAccelerator.is_available() is False
    reason = ROCmAccelerator.unavailable_reason()
    assert reason is not None
    assert "is a CUDA build (CUDA 12.6), not a ROCm build" in reason
    assert "the cuda accelerator applies" in reason


def test_fake_selection_by_name_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a ROCm build seeing 2 AMD GPUs (this machine has none): rocm is chosen by name and
    by auto (priority 100, cuda stepping aside), with DDP for two devices."""
    fake_rocm(monkeypatch, 2)
    runtime = Runtime(accelerator="rocm", devices=2)
    assert runtime.plan.names == {**runtime.plan.names, "accelerator": "rocm", "strategy": "ddp"}
    assert runtime.plan.devices == [torch.device("cuda", 0), torch.device("cuda", 1)]
    plan = select(PluginRegistry(), accelerator="auto", devices=1, precision="bf16-mixed")
    assert plan.names["accelerator"] == "rocm"
    assert isinstance(plan.accelerator, ROCmAccelerator)


def test_fake_gpu_alias_resolves_to_rocm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a ROCm build seeing 1 AMD GPU (this machine has none): "gpu" means rocm here."""
    fake_rocm(monkeypatch, 1)
    try:
        plan = select(PluginRegistry(), accelerator="gpu", devices=1)
    except PluginConflictError as error:
        pytest.skip(f"selection does not resolve shared aliases yet: {error}")
    assert plan.names["accelerator"] == "rocm"


@pytest.mark.parametrize(
    ("devices", "expected"),
    [(2, [0, 1]), ("0,1", [0, 1]), ([1], [1]), ("auto", [0, 1]), (-1, [0, 1])],
)
def test_fake_parse_devices(
    monkeypatch: pytest.MonkeyPatch, devices: Any, expected: list[int]
) -> None:
    """Fake: a ROCm build seeing 2 AMD GPUs (this machine has none)."""
    fake_rocm(monkeypatch, 2)
    assert ROCmAccelerator.parse_devices(devices) == expected


def test_fake_refusals_name_the_visibility_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a ROCm build seeing 2 AMD GPUs through HIP_VISIBLE_DEVICES (this machine has
    none): a refusal says what the variable keeps."""
    fake_rocm(monkeypatch, 2)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "2,3")
    with pytest.raises(DeviceSelectionError) as caught:
        ROCmAccelerator.parse_devices(3)
    message = str(caught.value)
    assert "devices=3 asks for 3 cuda devices, but only 2 visible" in message
    assert "HIP_VISIBLE_DEVICES='2,3' make 2 GPU(s) visible, as indices 0..1" in message


def test_fake_no_gpu_on_a_rocm_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a ROCm build that sees no GPU because ROCR_VISIBLE_DEVICES hides them (this machine
    has neither)."""
    fake_rocm(monkeypatch, 0)
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "")
    reason = ROCmAccelerator.unavailable_reason()
    assert reason is not None
    assert "(HIP 6.2.41133) sees no AMD GPU" in reason
    assert "ROCR_VISIBLE_DEVICES='' leave no GPU visible" in reason
    assert "rocm-smi" in reason


def test_fake_selection_never_initialises_hip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake: a ROCm build seeing 2 AMD GPUs (this machine has none); torch.cuda's lazy init is
    replaced by a recorder: selecting ddp_fork and building its launcher never call it."""
    fake_rocm(monkeypatch, 2)
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: calls.append("_lazy_init"))
    runtime = Runtime(accelerator="rocm", strategy="ddp_fork", devices=2, precision="bf16-mixed")
    assert runtime.strategy.launcher is not None
    assert calls == []
    assert ROCmAccelerator.is_initialized() is False


# -- real hardware ------------------------------------------------------------------------


@needs_rocm_gpu
def test_rocm_gpu_selected_by_auto() -> None:
    """Real ROCm GPU: auto picks rocm, and selection leaves HIP uninitialised."""
    plan = select(PluginRegistry(), accelerator="auto", devices=1)
    assert plan.names["accelerator"] == "rocm"
    assert not torch.cuda.is_initialized()
