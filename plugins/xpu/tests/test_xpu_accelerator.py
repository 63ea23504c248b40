"""The xpu accelerator's answers to selection.

There is no Intel GPU on the machines these tests run on, so every test that needs one FAKES
``torch.xpu``'s device queries (monkeypatched ``_is_compiled``, ``is_available``,
``device_count``, ``is_bf16_supported``, ``get_device_name``, ``is_initialized``) and says so in
its docstring; the tests without that word run against the real torch of the environment. No
tensor ever goes to an XPU here: what is checked is parsing, selection, priorities, capability
refusals and messages. Real-hardware checks belong to a machine with an Intel GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import switchyard_cpu.plugin
import switchyard_ddp.plugin
import switchyard_xpu.plugin
from switchyard import DeviceSelectionError, SelectionError
from switchyard.registry import PluginRegistry
from switchyard.selection import select
from switchyard_xpu import XPUAccelerator
from switchyard_xpu.accelerator import is_xpu_build


def registry() -> PluginRegistry:
    """The CPU, DDP and XPU plugins alone: no other installed GPU plugin claims ``gpu``."""
    return PluginRegistry(
        [switchyard_cpu.plugin, switchyard_ddp.plugin, switchyard_xpu.plugin], autoload=False
    )


@pytest.fixture
def fake_xpus(monkeypatch: pytest.MonkeyPatch):
    """FAKE: makes ``torch.xpu`` report an XPU build with two Intel GPUs (``count`` and
    ``bf16`` can be changed by the test), and ``torch.distributed`` an xccl backend."""
    state = {"count": 2, "bf16": True, "initialized": False}

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return state["bf16"] or including_emulation

    monkeypatch.setattr(torch.xpu, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: state["count"] > 0)
    monkeypatch.setattr(torch.xpu, "device_count", lambda: state["count"])
    monkeypatch.setattr(torch.xpu, "is_initialized", lambda: state["initialized"])
    monkeypatch.setattr(torch.xpu, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.xpu, "get_device_name", lambda index=None: "Intel(R) Arc(TM) A770")
    monkeypatch.setattr(dist, "is_xccl_available", lambda: True, raising=False)
    for name in ("ZE_AFFINITY_MASK", "ONEAPI_DEVICE_SELECTOR"):
        monkeypatch.delenv(name, raising=False)
    return state


# -- the real torch of this environment (a CPU or CUDA build: no XPU) -------------------------


@pytest.mark.skipif(is_xpu_build(), reason="this torch is an XPU build")
def test_unavailable_without_an_xpu_build_says_which_torch_to_install() -> None:
    reason = XPUAccelerator.unavailable_reason()
    assert not XPUAccelerator.is_available()
    assert reason is not None
    assert torch.__version__ in reason
    assert "built without XPU" in reason
    assert "download.pytorch.org/whl/xpu" in reason


@pytest.mark.skipif(is_xpu_build(), reason="this torch is an XPU build")
def test_selecting_xpu_here_is_refused_with_the_reason_and_what_is_usable() -> None:
    with pytest.raises(SelectionError, match="built without XPU") as caught:
        select(registry(), accelerator="xpu")
    assert "Usable here: cpu" in str(caught.value)


@pytest.mark.skipif(is_xpu_build(), reason="this torch is an XPU build")
def test_auto_passes_over_xpu_here_and_picks_the_cpu() -> None:
    plan = select(registry(), accelerator="auto")
    assert plan.names["accelerator"] == "cpu"


def test_entry_declares_name_alias_priority_and_a_lazy_factory() -> None:
    [entry] = list(switchyard_xpu.plugin.switchyard_accelerators())
    assert entry.names == ("xpu", "gpu")
    assert entry.priority == 90  # above the CPU (0), below CUDA (100)
    assert entry.factory == "switchyard_xpu.accelerator:XPUAccelerator"
    assert entry.load() is XPUAccelerator


def test_env_report_reads_the_ipex_version_without_importing_it() -> None:
    import sys

    loaded_before = "intel_extension_for_pytorch" in sys.modules
    report = switchyard_xpu.plugin.switchyard_env_report()
    assert "intel_extension_for_pytorch" in report["versions"]
    assert "ZE_AFFINITY_MASK" in report["variables"]
    # the report itself must not load IPEX's kernels
    assert ("intel_extension_for_pytorch" in sys.modules) == loaded_before


# -- FAKE Intel GPUs -------------------------------------------------------------------------


def test_fake_two_gpus_are_found_and_parsed(fake_xpus) -> None:
    """FAKE torch.xpu with two GPUs: counting and every form of devices=."""
    assert XPUAccelerator.is_available()
    assert XPUAccelerator.unavailable_reason() is None
    assert XPUAccelerator.device_count() == 2
    assert XPUAccelerator.parse_devices("auto") == [0, 1]
    assert XPUAccelerator.parse_devices(-1) == [0, 1]
    assert XPUAccelerator.parse_devices("1") == [0]
    assert XPUAccelerator.parse_devices([1]) == [1]
    assert XPUAccelerator.get_device(1) == torch.device("xpu", 1)


def test_fake_devices_beyond_the_visible_ones_are_refused_naming_both(fake_xpus) -> None:
    """FAKE torch.xpu with two GPUs: asking for a third names what exists."""
    with pytest.raises(DeviceSelectionError, match=r"asks for 3 xpu devices, but only 2"):
        XPUAccelerator.parse_devices(3)
    with pytest.raises(
        DeviceSelectionError, match=r"index 2, but the visible indices are \[0, 1\]"
    ):
        XPUAccelerator.parse_devices([0, 2])


def test_fake_auto_picks_xpu_over_the_cpu_by_priority(fake_xpus) -> None:
    """FAKE torch.xpu with two GPUs: auto and the gpu alias choose the XPU."""
    plan = select(registry(), accelerator="auto", devices=1)
    assert plan.names["accelerator"] == "xpu"
    assert plan.devices == [torch.device("xpu", 0)]
    assert select(registry(), accelerator="gpu", devices=1).names["accelerator"] == "xpu"


def test_fake_two_gpus_run_ddp_over_xccl_paired_with_gloo(fake_xpus) -> None:
    """FAKE torch.xpu with two GPUs and a fake xccl: devices=2 picks DDP over xccl, with gloo
    for the CPU tensors of the same job (torch's backend map pairs them)."""
    assert XPUAccelerator.process_group_backend() == "cpu:gloo,xpu:xccl"
    plan = select(registry(), accelerator="xpu", devices=2)
    assert plan.names["strategy"] == "ddp"
    assert plan.world_size == 2


def test_fake_gpus_without_xccl_refuse_ddp_before_any_process_starts(
    fake_xpus, monkeypatch
) -> None:
    """FAKE torch.xpu with two GPUs, and a torch built without xccl: multi-process strategies
    are refused at selection, with the reason."""
    monkeypatch.setattr(dist, "is_xccl_available", lambda: False, raising=False)
    assert XPUAccelerator.process_group_backend() is None
    with pytest.raises(SelectionError, match="declares no process group backend"):
        select(registry(), accelerator="xpu", devices=2, strategy="ddp")
    # one device still works
    assert select(registry(), accelerator="xpu", devices=1).names["strategy"] == "single_device"


def test_fake_fork_after_the_gpu_was_initialised_is_refused(fake_xpus) -> None:
    """FAKE torch.xpu, initialised in this process: ddp_fork children could not use it, so the
    fork launcher is refused (when launch asks for it, before any process starts)."""
    plan = select(registry(), accelerator="xpu", devices=2, strategy="ddp_fork")
    assert plan.strategy.launcher is not None  # not initialised yet: forking is fine
    fake_xpus["initialized"] = True
    assert XPUAccelerator.is_initialized()
    plan = select(registry(), accelerator="xpu", devices=2, strategy="ddp_fork")
    with pytest.raises(SelectionError, match="initialised its 'xpu' device"):
        _ = plan.strategy.launcher


def test_fake_bf16_refused_where_the_gpu_only_emulates_it(fake_xpus) -> None:
    """FAKE torch.xpu whose GPU has no native bfloat16: bf16-mixed is refused, naming it."""
    assert XPUAccelerator.supports_precision("bf16-mixed", torch.bfloat16) is None
    fake_xpus["bf16"] = False
    reason = XPUAccelerator.supports_precision("bf16-mixed", torch.bfloat16)
    assert reason is not None
    assert "Intel(R) Arc(TM) A770" in reason
    assert "emulates" in reason
    with pytest.raises(SelectionError, match="emulates"):
        select(registry(), accelerator="xpu", devices=1, precision="bf16-mixed")
    assert XPUAccelerator.supports_precision("16-mixed", torch.float16) is None


def test_fake_no_gpu_with_a_visibility_mask_names_the_mask(fake_xpus, monkeypatch) -> None:
    """FAKE torch.xpu (an XPU build) that sees no GPU while ZE_AFFINITY_MASK is set."""
    fake_xpus["count"] = 0
    monkeypatch.setenv("ZE_AFFINITY_MASK", "7")
    reason = XPUAccelerator.unavailable_reason()
    assert reason is not None
    assert "ZE_AFFINITY_MASK='7'" in reason
    monkeypatch.delenv("ZE_AFFINITY_MASK")
    reason = XPUAccelerator.unavailable_reason()
    assert reason is not None
    assert "sees no Intel GPU" in reason
    assert "Level Zero" in reason
