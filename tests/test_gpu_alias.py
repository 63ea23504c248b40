"""Choosing among accelerators by what their entries declare, never by an order written in core:
``auto`` by priority, ``gpu`` (an alias several accelerators share) by priority among those
available, and the generic accelerator of a PyTorch device stepping aside for a plugin.

The GPU accelerators here are fakes: this machine has no GPU, and what is tested is selection,
which asks only the class methods (``is_available``, ``unavailable_reason``, ``device_count``).
They are registered explicitly, with autoload off, so that installed plugins do not change the
outcome. The PrivateUse1 device of the last tests is a fake too (a Python-registered ``acme``
device, as in tests/test_plugin_docs.py), in a child interpreter, since torch lets a process
rename its PrivateUse1 backend only once; the real device is tested in tests/openreg.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import ClassVar

import pytest

import switchyard_cpu.plugin as cpu_plugin
from switchyard import (
    Accelerator,
    AcceleratorEntry,
    PluginConflictError,
    SelectionError,
    StrategyEntry,
    hookimpl,
)
from switchyard.builtin.torch_device import GENERIC_PRIORITY, privateuse1_device_type
from switchyard.cli import plugins_report
from switchyard.registry import PluginRegistry
from switchyard.selection import select
from switchyard.testing.subprocesses import child_environment


class FakeGPU(Accelerator):
    """A fake GPU accelerator: available or not as the subclass says, with one device."""

    device_type: ClassVar[str] = "fakegpu"
    available: ClassVar[bool] = True
    reason: ClassVar[str] = ""

    @classmethod
    def is_available(cls) -> bool:
        return cls.available

    @classmethod
    def device_count(cls) -> int:
        return 1 if cls.available else 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if cls.available else cls.reason


class FakeCUDA(FakeGPU):
    device_type: ClassVar[str] = "cuda"


class FakeROCm(FakeGPU):
    device_type: ClassVar[str] = "cuda"
    available: ClassVar[bool] = False
    reason: ClassVar[str] = "torch.version.hip is None: this torch is built for CUDA"


class FakeMPS(FakeGPU):
    device_type: ClassVar[str] = "mps"
    available: ClassVar[bool] = False
    reason: ClassVar[str] = "not an Apple silicon Mac"


class FakeXPU(FakeGPU):
    device_type: ClassVar[str] = "xpu"


class BrokenGPU(FakeGPU):
    device_type: ClassVar[str] = "broken"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        raise RuntimeError("driver query crashed")


def plugin(name: str, *entries: AcceleratorEntry | StrategyEntry) -> types.ModuleType:
    """An explicit plugin, as a vendor's would be, registering ``entries``."""
    module = types.ModuleType(f"fake_{name}")
    accelerators = [e for e in entries if isinstance(e, AcceleratorEntry)]
    strategies = [e for e in entries if isinstance(e, StrategyEntry)]

    @hookimpl
    def switchyard_accelerators() -> list[AcceleratorEntry]:
        return accelerators

    @hookimpl
    def switchyard_strategies() -> list[StrategyEntry]:
        return strategies

    module.switchyard_accelerators = switchyard_accelerators  # type: ignore[attr-defined]
    module.switchyard_strategies = switchyard_strategies  # type: ignore[attr-defined]
    return module


def gpu(name: str, cls: type[Accelerator], priority: int, **fields: object) -> AcceleratorEntry:
    return AcceleratorEntry(
        name=name,
        factory=cls,
        description=f"{name} (a fake)",
        priority=priority,
        aliases=("gpu",),
        **fields,  # type: ignore[arg-type]
    )


def registry(*plugins: types.ModuleType) -> PluginRegistry:
    return PluginRegistry([cpu_plugin, *plugins], autoload=False)


def every_gpu(cuda: type[Accelerator] = FakeCUDA, xpu_priority: int = 90) -> list[types.ModuleType]:
    return [
        plugin("cuda", gpu("cuda", cuda, 100)),
        plugin("rocm", gpu("rocm", FakeROCm, 110)),
        plugin("mps", gpu("mps", FakeMPS, 100)),
        plugin("xpu", gpu("xpu", FakeXPU, xpu_priority)),
    ]


@pytest.mark.parametrize("order", [1, -1], ids=["as-listed", "reversed"])
def test_gpu_is_the_available_accelerator_of_highest_priority_declaring_it(order: int) -> None:
    # rocm (110) declares more than cuda (100) but is unavailable; xpu (90) is available
    plan = select(registry(*every_gpu()[::order]), accelerator="gpu", devices=1)
    assert plan.names["accelerator"] == "cuda"
    assert type(plan.accelerator) is FakeCUDA

    plan = select(registry(*every_gpu(xpu_priority=120)[::order]), accelerator="gpu", devices=1)
    assert plan.names["accelerator"] == "xpu"


def test_gpu_with_none_available_says_which_declare_it_and_why_each_is_not_usable() -> None:
    class AbsentCUDA(FakeCUDA):
        available: ClassVar[bool] = False
        reason: ClassVar[str] = "no NVIDIA driver found"

    class AbsentXPU(FakeXPU):
        available: ClassVar[bool] = False
        reason: ClassVar[str] = "torch.xpu.is_available() is False"

    plugins = [
        plugin("xpu", gpu("xpu", AbsentXPU, 90)),
        plugin("cuda", gpu("cuda", AbsentCUDA, 100)),
        plugin("rocm", gpu("rocm", FakeROCm, 110)),
        plugin("mps", gpu("mps", FakeMPS, 100)),
        plugin("other", AcceleratorEntry(name="fpga", factory=FakeGPU, priority=50)),
    ]
    with pytest.raises(SelectionError) as raised:
        select(registry(*plugins), accelerator="gpu", devices=1)
    message = str(raised.value)
    # highest priority first (the first registered among equals), each with its reason, then
    # what is usable instead: an accelerator that does not declare the alias is not taken
    assert "declaring it is available (highest priority first): rocm, cuda, mps, xpu" in message
    for reason in (AbsentCUDA.reason, FakeROCm.reason, FakeMPS.reason, AbsentXPU.reason):
        assert reason in message
    assert "Usable here: fpga, cpu" in message


def test_gpu_reports_a_missing_module_and_a_broken_plugin_and_still_finds_the_next() -> None:
    plugins = [
        plugin("needy", gpu("needy", FakeCUDA, 200, requires=("no_such_gpu_runtime",))),
        plugin("broken", gpu("broken", BrokenGPU, 150)),
        plugin("xpu", gpu("xpu", FakeXPU, 90)),
    ]
    with pytest.warns(RuntimeWarning, match="driver query crashed"):
        plan = select(registry(*plugins), accelerator="gpu", devices=1)
    assert plan.names["accelerator"] == "xpu"

    with pytest.raises(SelectionError) as raised, pytest.warns(RuntimeWarning):
        select(registry(*plugins[:2]), accelerator="gpu", devices=1)
    message = str(raised.value)
    assert "needs the module no_such_gpu_runtime" in message
    assert "RuntimeError: driver query crashed" in message


def test_a_shared_accelerator_alias_is_no_conflict() -> None:
    reg = registry(*every_gpu())
    assert reg.conflicts("accelerator") == {}
    assert reg.get("accelerator", "gpu").name == "rocm"  # highest declared priority
    assert [r.name for r in reg.shared_alias("accelerator", "gpu") or []] == [
        "rocm",
        "cuda",
        "mps",
        "xpu",
    ]
    report = plugins_report(reg)
    listed = {e["name"]: e for e in report["entries"] if e["kind"] == "accelerator"}
    assert listed["cuda"]["usable"] is True
    assert listed["cuda"]["aliases"] == ["gpu"]


def test_other_kinds_and_an_alias_that_is_a_name_still_conflict() -> None:
    fast = [
        plugin(name, StrategyEntry(name=name, factory=object, aliases=("fast",)))
        for name in ("one", "two")
    ]
    with pytest.raises(PluginConflictError, match="'fast' is registered by 2 plugins"):
        registry(*fast).get("strategy", "fast")

    named_gpu = plugin("vendor", AcceleratorEntry(name="gpu", factory=FakeXPU))
    reg = registry(named_gpu, *every_gpu())
    assert reg.shared_alias("accelerator", "gpu") is None
    with pytest.raises(PluginConflictError):
        reg.get("accelerator", "gpu")


@pytest.mark.parametrize("order", [1, -1], ids=["as-listed", "reversed"])
def test_auto_follows_declared_priority_whatever_the_order_of_plugins(order: int) -> None:
    plugins = [
        plugin("low", AcceleratorEntry(name="aaa", factory=FakeXPU, priority=5)),
        plugin("high", AcceleratorEntry(name="zzz", factory=FakeCUDA, priority=50)),
        plugin("absent", AcceleratorEntry(name="mmm", factory=FakeMPS, priority=500)),
    ]
    plan = select(registry(*plugins[::order]), accelerator="auto", devices=1)
    assert plan.names["accelerator"] == "zzz"


def test_without_a_privateuse1_device_no_generic_accelerator_is_registered() -> None:
    assert privateuse1_device_type() is None  # this environment has no device extension
    # with autoload off and no plugin passed, only the built-in plugin is there
    assert PluginRegistry(autoload=False).registrations("accelerator") == []


FAKE_DEVICE = """
import types
import torch

# a fake PrivateUse1 extension: the "acme" device, answering queries from Python, no kernels
torch.utils.rename_privateuse1_backend("acme")
module = types.ModuleType("torch.acme")
module.is_available = lambda: True
module.device_count = lambda: 2
module.is_initialized = lambda: False
torch._register_device_module("acme", module)
"""

CHILD = """
import json, types, warnings
from typing import ClassVar
import switchyard_cpu.plugin as cpu_plugin
from switchyard import Accelerator, AcceleratorEntry, SelectionError, hookimpl
from switchyard.registry import PluginRegistry
from switchyard.selection import select

class Vendor(Accelerator):
    device_type: ClassVar[str] = "acme"

def vendor(name, priority):
    module = types.ModuleType("vendor_" + name.replace("-", "_"))
    module.switchyard_accelerators = hookimpl(
        lambda: [AcceleratorEntry(name=name, factory=Vendor, priority=priority)]
    )
    return module

def pick(*plugins, accelerator="auto"):
    registry = PluginRegistry([cpu_plugin, *plugins], autoload=False)
    try:
        plan = select(registry, accelerator=accelerator, devices=1)
    except SelectionError as error:
        return "error: " + str(error)
    return [plan.names["accelerator"], type(plan.accelerator).__name__]

registry = PluginRegistry([cpu_plugin], autoload=False)
[entry] = [r.entry for r in registry.registrations("accelerator") if r.plugin.name == "builtin"]
print(json.dumps({
    "entry": [entry.name, entry.priority],
    "auto": pick(),
    "by_name": pick(accelerator="acme"),
    "auto_count": select(registry, accelerator="acme").device_indices,
    "vendor_same_name": pick(vendor("acme", 40)),
    "vendor_same_name_by_name": pick(vendor("acme", 40), accelerator="acme"),
    "vendor_other_name": pick(vendor("acme-npu", 1)),
    "vendor_other_name_by_name": pick(vendor("acme-npu", 1), accelerator="acme"),
}))
"""


def test_a_privateuse1_device_gets_the_generic_accelerator_which_yields_to_plugins(
    tmp_path: Path,
) -> None:
    (tmp_path / "fake_acme_device.py").write_text(textwrap.dedent(FAKE_DEVICE))
    proc = subprocess.run(
        [sys.executable, "-c", "import fake_acme_device\n" + textwrap.dedent(CHILD)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=child_environment({"PYTHONPATH": str(tmp_path)}),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["entry"] == ["acme", GENERIC_PRIORITY]
    # above the host CPU in auto, and selectable by the device type's name
    assert result["auto"] == ["acme", "TorchDeviceAccelerator"]
    assert result["by_name"] == ["acme", "TorchDeviceAccelerator"]
    # devices="auto" is one device: torch.distributed has no backend for "acme" tensors
    assert result["auto_count"] == [0]
    # a plugin for the device wins, by name and in auto, whatever priority it declares
    assert result["vendor_same_name"] == ["acme", "Vendor"]
    assert result["vendor_same_name_by_name"] == ["acme", "Vendor"]
    assert result["vendor_other_name"] == ["acme-npu", "Vendor"]
    assert result["vendor_other_name_by_name"].startswith("error: ")
    assert "pass accelerator='acme-npu'" in result["vendor_other_name_by_name"]
