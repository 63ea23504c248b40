"""Turning Runtime arguments into a plan: every bad argument fails early, saying what was asked,
what exists and what to do.

Registries here are built with ``autoload=False`` and the CPU plugin passed explicitly, so the
results do not depend on which other plugins (DDP, ...) happen to be installed.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import switchyard_cpu.plugin as cpu_plugin
from switchyard import (
    Accelerator,
    AcceleratorEntry,
    DeviceSelectionError,
    PrecisionEntry,
    Runtime,
    SelectionError,
    StrategyEntry,
)
from switchyard.builtin.precisions import MixedPrecision, TruePrecision
from switchyard.builtin.single_device import SingleDeviceStrategy
from switchyard.registry import PluginRegistry
from switchyard.selection import select
from switchyard_cpu import CPUAccelerator


class GhostAccelerator(Accelerator):
    """A fake for hardware that is absent from this machine: installed, but never available.
    Selection must refuse it with its reason and ``auto`` must skip it."""

    device_type: ClassVar[str] = "ghost"

    @classmethod
    def is_available(cls) -> bool:
        return False

    @classmethod
    def device_count(cls) -> int:
        return 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "the Ghost driver reports 0 cards"


class PlainGhostAccelerator(GhostAccelerator):
    """Absent hardware with the default reason."""

    device_type: ClassVar[str] = "plainghost"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return Accelerator.unavailable_reason.__func__(cls)  # type: ignore[attr-defined]


class FastCPU(CPUAccelerator):
    """The host CPU under another name and a higher priority: stands in for a faster
    accelerator that is present."""


class FourDevices(Accelerator):
    """An accelerator with four (fake) devices, for the generic ``parse_devices``."""

    device_type: ClassVar[str] = "quad"
    distributed_backend: ClassVar[str | None] = "gloo"

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def device_count(cls) -> int:
        return 4


class FourSilentDevices(FourDevices):
    """Four (fake) devices no ``torch.distributed`` backend takes tensors of."""

    distributed_backend: ClassVar[str | None] = None


def test_auto_devices_is_one_where_processes_cannot_talk():
    # devices="auto" on four devices without a backend would start four processes that can
    # only fail; one runs
    assert FourSilentDevices.parse_devices("auto") == [0]
    assert FourSilentDevices.parse_devices(4) == [0, 1, 2, 3]


class FakeMultiProcess(SingleDeviceStrategy):
    """Registered as a distributed strategy: a stand-in for DDP that is only selected here,
    never launched."""


GHOST = AcceleratorEntry(name="ghost", factory=GhostAccelerator, priority=1000)
FAST = AcceleratorEntry(name="fastcpu", factory=FastCPU, priority=50)
MULTI = StrategyEntry(name="fakeddp", factory=FakeMultiProcess, distributed=True)


@pytest.fixture
def registry_with(make_plugin):
    """``registry_with(accelerators=[...], ...)``: only the builtin plugin, the CPU plugin and
    a test plugin holding the given entries."""

    def build(**entries):
        plugins = [cpu_plugin]
        if entries:
            plugins.append(make_plugin("test_entries", **entries))
        return PluginRegistry(autoload=False, plugins=plugins)

    return build


@pytest.fixture
def registry(registry_with):
    return registry_with()


# -- unknown names ------------------------------------------------------------------------------


def test_unknown_accelerator_suggests_the_close_name(registry):
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="cpx")
    message = str(info.value)
    assert "unknown accelerator 'cpx'" in message
    assert "Did you mean 'cpu'?" in message
    assert "cpu" in message.split("Installed")[1]


def test_unknown_strategy_suggests_the_close_name(registry):
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="cpu", strategy="singel_device")
    message = str(info.value)
    assert "'singel_device'" in message
    assert "Did you mean 'single_device'?" in message


def test_unknown_precision_suggests_the_close_name(registry):
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="cpu", precision="bf17-mixed")
    message = str(info.value)
    assert "unknown precision 'bf17-mixed'" in message
    assert "'bf16-mixed'" in message
    assert "32-true" in message  # what is installed


def test_unknown_name_without_close_match_lists_what_is_installed(registry):
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="quantum")
    message = str(info.value)
    assert "Did you mean" not in message
    assert "cpu" in message


@pytest.mark.parametrize(
    ("argument", "value", "extra"),
    [
        # the hint comes from the installed switchyard's metadata (tests/test_first_party.py)
        ("strategy", "fsdp", "pip install 'switchyard[fsdp]'"),
        ("strategy", "fsdp_cpu_offload", "pip install 'switchyard[fsdp]'"),
        ("strategy", "ddp", "pip install switchyard-ddp"),
        ("strategy", "ddp_spawn", "pip install switchyard-ddp"),
    ],
)
def test_first_party_name_without_its_plugin_gives_the_install_command(
    registry, argument, value, extra
):
    kwargs = {"accelerator": "cpu", argument: value}
    with pytest.raises(SelectionError) as info:
        select(registry, **kwargs)
    message = str(info.value)
    assert f"{value!r}" in message
    assert extra in message


def test_installed_entry_missing_its_engine_gives_the_install_command(registry_with):
    registry = registry_with(
        accelerators=[
            AcceleratorEntry(name="npu", factory=GhostAccelerator, requires=("torch_npu_nope",)),
        ],
        strategies=[
            StrategyEntry(
                name="fsdp", factory=FakeMultiProcess, distributed=True, requires=("fsdp_nope",)
            )
        ],
    )
    with pytest.raises(SelectionError, match=r"needs the module fsdp_nope.*switchyard\[fsdp\]"):
        select(registry, accelerator="cpu", strategy="fsdp")
    # a third-party module name is not a distribution name: no guessed pip command
    with pytest.raises(SelectionError, match=r"needs the module torch_npu_nope.*the package that"):
        select(registry, accelerator="npu")


def test_failed_plugins_are_mentioned_when_a_name_is_unknown(registry_with, make_plugin):
    def broken():
        raise RuntimeError("probe crashed")

    registry = PluginRegistry(
        autoload=False, plugins=[cpu_plugin, make_plugin("broken_vendor", accelerators=broken)]
    )
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="npu")
    assert "broken_vendor" in str(info.value)
    assert "probe crashed" in str(info.value)


@pytest.mark.parametrize(
    ("argument", "value"),
    [("accelerator", 3), ("strategy", 2.5), ("precision", True), ("precision", 16.0)],
)
def test_argument_of_the_wrong_type_is_refused(registry, argument, value):
    kwargs = {"accelerator": "cpu", argument: value}
    with pytest.raises(SelectionError, match=f"{argument}={value!r}"):
        select(registry, **kwargs)


# -- devices and nodes --------------------------------------------------------------------------


@pytest.mark.parametrize("devices", [0, -2, "abc", "", [0, 1], True, "0,1", 1.5])
def test_bad_cpu_devices_are_refused(registry, devices):
    with pytest.raises(DeviceSelectionError) as info:
        select(registry, accelerator="cpu", devices=devices)
    message = str(info.value)
    assert f"devices={devices!r}" in message
    assert "devices=N" in message or "pass a positive number" in message


@pytest.mark.parametrize(("devices", "expected"), [(1, (0,)), ("1", (0,)), ("auto", (0,))])
def test_good_cpu_devices(registry, devices, expected):
    assert select(registry, accelerator="cpu", devices=devices).device_indices == expected


@pytest.mark.parametrize("num_nodes", [0, -1, "two", True, 1.5])
def test_bad_num_nodes_is_refused(registry, num_nodes):
    with pytest.raises(SelectionError, match=rf"num_nodes={num_nodes!r} must be a positive"):
        select(registry, accelerator="cpu", num_nodes=num_nodes)


def test_single_device_strategy_refuses_several_devices(registry, registry_with):
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="cpu", strategy="single_device", devices=2)
    message = str(info.value)
    assert "'single_device'" in message
    assert "2 processes" in message
    assert "devices=1" in message
    assert "pip install switchyard-ddp" in message  # nothing distributed is installed
    # with a distributed strategy installed, the message names it
    with pytest.raises(SelectionError, match=r"distributed strategy \(fakeddp\)"):
        select(
            registry_with(strategies=[MULTI]),
            accelerator="cpu",
            strategy="single_device",
            num_nodes=2,
        )


def test_auto_strategy_for_several_devices_without_a_distributed_strategy(registry):
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="cpu", strategy="auto", devices=2)
    message = str(info.value)
    assert "strategy='auto'" in message
    assert "2 devices x 1 nodes" in message
    assert "single_device" in message  # what is installed
    assert "pip install switchyard-ddp" in message


def test_auto_strategy_picks_distributed_only_for_several_processes(registry_with):
    registry = registry_with(strategies=[MULTI])
    assert select(registry, accelerator="cpu", devices=1).names["strategy"] == "single_device"
    plan = select(registry, accelerator="cpu", devices=2)
    assert plan.names["strategy"] == "fakeddp"
    assert plan.world_size == 2
    plan = select(registry, accelerator="cpu", devices=1, num_nodes=3)
    assert (plan.names["strategy"], plan.num_nodes, plan.world_size) == ("fakeddp", 3, 3)


def test_strategy_restricted_to_other_accelerators_is_refused(registry_with):
    registry = registry_with(
        strategies=[
            StrategyEntry(name="cuda_only", factory=SingleDeviceStrategy, accelerators=("cuda",))
        ]
    )
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="cpu", strategy="cuda_only")
    message = str(info.value)
    assert "strategy 'cuda_only' supports accelerators cuda, not 'cpu'" in message
    assert "single_device" in message  # the alternative that works


def test_strategy_restricted_to_other_precisions_is_refused(registry_with):
    registry = registry_with(
        strategies=[
            StrategyEntry(name="bf16_only", factory=SingleDeviceStrategy, precisions=("bf16-true",))
        ]
    )
    with pytest.raises(SelectionError, match="supports precisions bf16-true, not '32-true'"):
        select(registry, accelerator="cpu", strategy="bf16_only", precision="32")
    plan = select(registry, accelerator="cpu", strategy="bf16_only", precision="bf16-true")
    assert plan.names["strategy"] == "bf16_only"


# -- precision ----------------------------------------------------------------------------------


def test_precision_restricted_to_another_accelerator_is_refused(registry_with):
    registry = registry_with(
        precisions=[
            PrecisionEntry(
                name="fp8-te",
                factory=TruePrecision,
                accelerators=("cuda", "rocm"),
                description="Transformer Engine float8",
            )
        ]
    )
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="cpu", precision="fp8-te")
    assert "precision 'fp8-te' supports accelerators cuda, rocm, not 'cpu'" in str(info.value)


def test_precision_the_accelerator_cannot_run_is_refused(registry_with):
    class NoHalfCPU(CPUAccelerator):
        """The CPU, claiming it cannot compute in float16."""

        @classmethod
        def supports_precision(cls, precision_name, dtype):
            return "no float16 kernels" if dtype == torch.float16 else None

    registry = registry_with(accelerators=[AcceleratorEntry(name="nohalf", factory=NoHalfCPU)])
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="nohalf", precision="16-mixed")
    assert "precision '16-mixed' cannot run on accelerator 'nohalf': no float16 kernels" in str(
        info.value
    )
    assert select(registry, accelerator="nohalf", precision="bf16").names["precision"] == (
        "bf16-mixed"
    )


@pytest.mark.parametrize(
    ("value", "name", "cls"),
    [
        ("32", "32-true", TruePrecision),
        (32, "32-true", TruePrecision),
        (64, "64-true", TruePrecision),
        ("16", "16-mixed", MixedPrecision),
        (16, "16-mixed", MixedPrecision),
        ("bf16", "bf16-mixed", MixedPrecision),
        (" BF16-True ", "bf16-true", TruePrecision),
    ],
)
def test_precision_aliases_resolve_to_the_entry_name(registry, value, name, cls):
    plan = select(registry, accelerator="cpu", precision=value)
    assert plan.names["precision"] == name
    assert plan.precision.name == name
    assert type(plan.precision) is cls


# -- accelerators -------------------------------------------------------------------------------


def test_installed_but_unavailable_accelerator_gives_the_reason(registry_with):
    registry = registry_with(accelerators=[GHOST])
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="ghost")
    message = str(info.value)
    assert "accelerator 'ghost' is installed but cannot be used here" in message
    assert "the Ghost driver reports 0 cards" in message
    assert "Usable here: cpu" in message


def test_unavailable_accelerator_default_reason(registry_with):
    registry = registry_with(
        accelerators=[AcceleratorEntry(name="plainghost", factory=PlainGhostAccelerator)]
    )
    with pytest.raises(SelectionError, match=r"torch knows no device type 'plainghost'"):
        select(registry, accelerator="plainghost")


def test_auto_picks_the_highest_priority_available_accelerator(registry_with):
    broken = AcceleratorEntry(name="broken", factory="no_such_module_xyz:Accel", priority=900)
    missing = AcceleratorEntry(
        name="needs", factory=FastCPU, requires=("no_such_engine_xyz",), priority=800
    )
    registry = registry_with(accelerators=[GHOST, broken, missing, FAST])

    plan = select(registry, accelerator="auto")

    assert plan.names["accelerator"] == "fastcpu"
    assert type(plan.accelerator) is FastCPU
    assert plan.devices == [torch.device("cpu")]
    # without the faster one, the CPU
    registry = registry_with(accelerators=[GHOST, broken, missing])
    assert select(registry, accelerator="auto").names["accelerator"] == "cpu"


def test_auto_with_no_usable_accelerator_says_what_is_installed(make_plugin):
    registry = PluginRegistry(
        autoload=False, plugins=[make_plugin("only_ghost", accelerators=[GHOST])]
    )
    with pytest.raises(SelectionError) as info:
        select(registry)
    message = str(info.value)
    assert "accelerator='auto' found no usable accelerator" in message
    assert "Installed: ghost" in message
    assert "switchyard-cpu" in message


def test_accelerator_instance_is_used_as_is(registry):
    accelerator = FastCPU()
    plan = select(registry, accelerator=accelerator)
    assert plan.accelerator is accelerator
    assert plan.strategy.accelerator is accelerator


# -- values from `switchyard run` ---------------------------------------------------------------


def test_environment_variables_are_used_when_an_argument_is_none(registry_with, monkeypatch):
    registry = registry_with(accelerators=[FAST], strategies=[MULTI])
    monkeypatch.setenv("SWITCHYARD_ACCELERATOR", "fastcpu")
    monkeypatch.setenv("SWITCHYARD_PRECISION", "bf16-mixed")
    monkeypatch.setenv("SWITCHYARD_DEVICES", "2")
    monkeypatch.setenv("SWITCHYARD_NUM_NODES", "3")

    plan = select(registry)

    assert plan.names["accelerator"] == "fastcpu"
    assert plan.names["precision"] == "bf16-mixed"
    assert plan.names["strategy"] == "fakeddp"
    assert (plan.device_indices, plan.num_nodes) == ((0, 1), 3)


def test_explicit_arguments_win_over_environment_variables(registry_with, monkeypatch):
    registry = registry_with(accelerators=[FAST], strategies=[MULTI])
    monkeypatch.setenv("SWITCHYARD_ACCELERATOR", "fastcpu")
    monkeypatch.setenv("SWITCHYARD_PRECISION", "bf16-mixed")
    monkeypatch.setenv("SWITCHYARD_DEVICES", "2")
    monkeypatch.setenv("SWITCHYARD_STRATEGY", "fakeddp")
    monkeypatch.setenv("SWITCHYARD_NUM_NODES", "3")

    plan = select(
        registry,
        accelerator="cpu",
        precision="32-true",
        devices=1,
        strategy="single_device",
        num_nodes=1,
    )

    assert plan.names == {
        "accelerator": "cpu",
        "precision": "32-true",
        "strategy": "single_device",
        "environment": "local",
    }
    assert (plan.device_indices, plan.num_nodes) == ((0,), 1)


def test_bad_environment_variable_is_reported_like_an_argument(registry, monkeypatch):
    monkeypatch.setenv("SWITCHYARD_ACCELERATOR", "cpx")
    with pytest.raises(SelectionError, match=r"unknown accelerator 'cpx'.*'cpu'"):
        select(registry)


def test_runtime_reads_the_environment_variables(monkeypatch):
    monkeypatch.setenv("SWITCHYARD_PRECISION", "bf16-mixed")
    monkeypatch.setenv("SWITCHYARD_ACCELERATOR", "cpu")
    runtime = Runtime()
    assert runtime.plan.names["precision"] == "bf16-mixed"
    assert runtime.plan.names["accelerator"] == "cpu"
    assert Runtime(precision="64-true").plan.names["precision"] == "64-true"


# -- the generic Accelerator.parse_devices ------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        (1, [0]),
        (3, [0, 1, 2]),
        (-1, [0, 1, 2, 3]),
        ([2], [2]),
        ([3, 1], [3, 1]),
        ((0, 2), [0, 2]),
        ("0,1", [0, 1]),
        (" 1, 3 ", [1, 3]),
        ("2", [0, 1]),
        ("-1", [0, 1, 2, 3]),
        ("auto", [0, 1, 2, 3]),
        ("AUTO", [0, 1, 2, 3]),
    ],
)
def test_parse_devices_accepts(devices, expected):
    assert FourDevices.parse_devices(devices) == expected


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (5, "asks for 5 quad devices, but only 4 visible"),
        ("5", "asks for 5 quad devices, but only 4 visible"),
        (0, "devices=0 is not a valid count"),
        (-2, "devices=-2 is not a valid count"),
        ([4], "names quad index 4, but the visible indices are [0, 1, 2, 3]"),
        ([-1], "names quad index -1"),
        ("0,4", "names quad index 4"),
        ([1, 1], "names a device more than once"),
        ("2,2", "names a device more than once"),
        ([], "selects no device"),
        ([0, "1"], "must contain integer indices only"),
        ([True], "must contain integer indices only"),
        (True, "is a bool"),
        ("abc", "devices='abc' is not understood"),
        ("0,x", "not a comma-separated list"),
    ],
)
def test_parse_devices_refuses(devices, message):
    with pytest.raises(DeviceSelectionError) as info:
        FourDevices.parse_devices(devices)
    assert message in str(info.value)


def test_parse_devices_all_when_none_is_visible():
    with pytest.raises(DeviceSelectionError, match="asks for all ghost devices, but none"):
        GhostAccelerator.parse_devices(-1)
