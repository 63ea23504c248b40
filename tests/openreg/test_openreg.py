"""A real out-of-tree PyTorch device with no switchyard plugin: OpenReg.

OpenReg is PyTorch's reference PrivateUse1 backend (``torch_openreg``, built from the shared
test-devices folder by ``scripts/test-openreg``): a real extension, autoloaded by ``import torch``
through the ``torch.backends`` entry-point group, whose two devices compute in host memory.
Nothing here is a fake device. The one fake is the vendor plugin of the "a plugin takes the
generic accelerator's place" tests, an ``Accelerator`` subclass passed explicitly, since no vendor
ships a switchyard plugin for OpenReg.

These tests run only in the OpenReg environment: everywhere else they are skipped, at the cost
of one ``find_spec`` (``import torch`` there autoloads the extension for the whole process, so
it never joins the main environment).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import pickle
import types
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from switchyard import (
    Accelerator,
    AcceleratorEntry,
    Runtime,
    SelectionError,
    hookimpl,
    seed_everything,
)
from switchyard.builtin.torch_device import GENERIC_PRIORITY, TorchDeviceAccelerator
from switchyard.cli import plugins_report
from switchyard.registry import PluginRegistry

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch_openreg") is None,
    reason="needs the openreg environment: scripts/test-openreg",
)

STEPS = 8
LOSS_RTOL, LOSS_ATOL = 1e-6, 1e-7
"""OpenReg's kernels fall back to the host CPU's, so losses should agree with a CPU run to
float32 rounding; this bound would catch a wrong device, a lost optimizer state or a skipped
step, none of which moves a loss by less than 1e-4."""


@pytest.fixture(scope="module", autouse=True)
def _openreg_is_current() -> None:
    current = torch.accelerator.current_accelerator()
    assert current is not None, "torch_openreg is installed but torch sees no accelerator"
    assert current.type == "openreg", (
        f"torch_openreg is installed but torch's current accelerator is {current}: was torch's "
        "backend autoload turned off (TORCH_DEVICE_BACKEND_AUTOLOAD=0)?"
    )


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch, seen every step, so that the loss must fall."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=generator)
    y = x.sum(dim=-1, keepdim=True).sin()
    return [(x, y)] * STEPS


def cpu_losses() -> list[float]:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for x, y in batches():
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_the_builtin_plugin_registers_the_device_and_plugins_lists_it() -> None:
    registry = PluginRegistry()
    [registration] = [r for r in registry.registrations("accelerator") if r.name == "openreg"]
    assert registration.plugin.source == "builtin"
    assert registration.entry.priority == GENERIC_PRIORITY
    cls = registration.entry.load()
    assert issubclass(cls, TorchDeviceAccelerator)
    assert cls.device_type == "openreg"
    assert cls.device_count() == 2
    assert cls.process_group_backend() is None  # gloo refuses OpenReg tensors
    assert cls.auto_device_count() == 1  # so devices="auto" asks for no process it cannot join
    assert not cls.is_initialized()  # detection and these questions created no device context
    # the class is made at run time; an instance still travels to another process
    assert type(pickle.loads(pickle.dumps(cls()))) is cls

    report = plugins_report(registry)
    [listed] = [e for e in report["entries"] if e["name"] == "openreg"]
    assert listed["kind"] == "accelerator"
    assert listed["plugin"] == "builtin"
    assert listed["usable"] is True, listed["reason"]
    assert report["auto_accelerator"]["name"] == "openreg"


@pytest.mark.parametrize("accelerator", ["openreg", "auto"])
def test_training_matches_cpu_with_an_optimizer_created_before_setup(accelerator: str) -> None:
    runtime = Runtime(accelerator=accelerator)
    assert runtime.plan.names["accelerator"] == "openreg"
    assert runtime.plan.names["strategy"] == "single_device"
    assert runtime.device == torch.device("openreg", 0)
    runtime.launch()
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # before setup, on the CPU
    model, optimizer = runtime.setup(model, optimizer)

    # moving to OpenReg makes new Parameter objects: the optimizer must follow them
    parameters = list(model.parameters())
    assert all(p.device.type == "openreg" for p in parameters)
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert [id(p) for p in held] == [id(p) for p in parameters]

    losses = []
    for x, y in batches():
        x, y = runtime.to_device((x, y))
        assert x.device.type == "openreg"
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        runtime.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    assert all(state["exp_avg"].device.type == "openreg" for state in optimizer.state.values())
    expected = cpu_losses()
    assert losses == pytest.approx(expected, rel=LOSS_RTOL, abs=LOSS_ATOL)
    assert expected[-1] < expected[0]  # it trained


def test_seeding_reaches_the_device() -> None:
    runtime = Runtime(accelerator="openreg")
    runtime.launch()
    seed_everything(3)
    first = torch.randn(4, device=runtime.device).cpu()
    seed_everything(3)
    again = torch.randn(4, device=runtime.device).cpu()
    assert torch.equal(first, again)


@pytest.mark.parametrize(
    ("strategy", "devices"),
    [("ddp", 1), ("ddp", 2), ("ddp_spawn", 2), ("fsdp", 1), ("fsdp", 2), ("auto", 2)],
)
def test_multi_process_strategies_are_refused_before_any_process_starts(
    strategy: str, devices: int
) -> None:
    with pytest.raises(SelectionError) as raised:
        Runtime(accelerator="openreg", strategy=strategy, devices=devices)
    message = str(raised.value)
    assert "'openreg'" in message
    assert "backend" in message  # says why: no torch.distributed backend takes its tensors
    assert "single_device" in message or "devices=1" in message  # and what to do
    assert multiprocessing.active_children() == []
    assert not torch.distributed.is_initialized()


# -- a vendor plugin for the device takes the generic accelerator's place --------------------


class VendorOpenRegAccelerator(Accelerator):
    """A fake vendor plugin's accelerator for the real OpenReg device (no vendor ships one)."""

    device_type: ClassVar[str] = "openreg"


def vendor_plugin(name: str, priority: int = 60) -> types.ModuleType:
    plugin = types.ModuleType(f"vendor_{name.replace('-', '_')}")

    @hookimpl
    def switchyard_accelerators() -> list[AcceleratorEntry]:
        return [
            AcceleratorEntry(
                name=name,
                factory=VendorOpenRegAccelerator,
                description="OpenReg through its vendor's plugin (a test fake)",
                priority=priority,
            )
        ]

    plugin.switchyard_accelerators = switchyard_accelerators  # type: ignore[attr-defined]
    return plugin


def test_a_plugin_naming_the_device_type_wins_by_name_and_in_auto() -> None:
    vendor = vendor_plugin("openreg")
    for accelerator in ("openreg", "auto"):
        runtime = Runtime(accelerator=accelerator, devices=1, plugins=[vendor])
        assert type(runtime.accelerator) is VendorOpenRegAccelerator, accelerator
    # not a conflict, in selection or in the listing
    report = plugins_report(PluginRegistry([vendor]))
    listed = [e for e in report["entries"] if e["name"] == "openreg"]
    assert {e["plugin"] for e in listed} == {"builtin", vendor.__name__}
    assert all("also registered" not in (e["reason"] or "") for e in listed)
    # the generic one stays reachable by its qualified name
    generic = Runtime(accelerator="builtin:openreg", plugins=[vendor])
    assert isinstance(generic.accelerator, TorchDeviceAccelerator)


def test_a_plugin_declaring_the_device_type_under_another_name_wins() -> None:
    vendor = vendor_plugin("acme-openreg", priority=5)  # even below the generic one
    runtime = Runtime(accelerator="auto", devices=1, plugins=[vendor])
    assert runtime.plan.names["accelerator"] == "acme-openreg"
    with pytest.raises(SelectionError) as raised:
        Runtime(accelerator="openreg", devices=1, plugins=[vendor])
    message = str(raised.value)
    assert "generic accelerator" in message
    assert "accelerator='acme-openreg'" in message
    assert "builtin:openreg" in message
