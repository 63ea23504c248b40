"""Install hints for first-party names (``switchyard.first_party``): derived from the installed
``switchyard`` distribution's metadata, read only when an error is worded."""

from __future__ import annotations

import importlib.metadata

import pytest

import switchyard_cpu.plugin as cpu_plugin
from switchyard import SelectionError, first_party
from switchyard.registry import PluginRegistry
from switchyard.selection import select

# what a release of switchyard with more plugins would declare (hatch_build.py writes it)
RELEASE = [
    "pluggy>=1.5",
    "switchyard-cpu",
    "switchyard-ddp",
    "torch>=2.8",
    "switchyard-fsdp; extra == 'all'",
    "switchyard_DeepSpeed ; extra == 'all'",
    "switchyard-fsdp; extra == 'fsdp'",
    "switchyard-xla; extra == 'xla'",
    "torch-xla; extra == 'xla'",
    'switchyard_DeepSpeed ; extra == "deepspeed"',
    "deepspeed; extra == 'deepspeed'",
    "pytest>=8; extra == 'testing'",
]
# what a build from today's checkout declares: plugins as file URLs, no xla or deepspeed
CHECKOUT = [
    "pluggy>=1.5",
    "switchyard-cpu @ file:///src/switchyard/plugins/cpu",
    "switchyard-ddp @ file:///src/switchyard/plugins/ddp",
    "torch>=2.8",
    "switchyard-fsdp @ file:///src/switchyard/plugins/fsdp ; extra == 'all'",
    "switchyard-fsdp @ file:///src/switchyard/plugins/fsdp ; extra == 'fsdp'",
    "pytest>=8; extra == 'testing'",
]


@pytest.fixture
def requires(monkeypatch):
    """``requires(lines)``: the installed switchyard declares these Requires-Dist lines
    (``None``: switchyard is not installed)."""

    def install(lines: list[str] | None) -> None:
        real = importlib.metadata.requires

        def fake(name: str) -> list[str] | None:
            if name != "switchyard":
                return real(name)
            if lines is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return list(lines)

        monkeypatch.setattr(importlib.metadata, "requires", fake)

    return install


@pytest.mark.parametrize(
    ("kind", "name", "plugin"),
    [
        ("accelerator", "cpu", "cpu"),
        ("strategy", "ddp", "ddp"),
        ("strategy", "ddp_spawn", "ddp"),
        ("strategy", "fsdp_cpu_offload", "fsdp"),  # the first part that is a plugin
        ("strategy", "deepspeed_stage_3", "deepspeed"),
        ("strategy", "deepspeed_stage_2_offload", "deepspeed"),
        ("strategy", "single_xla", "xla"),
        ("strategy", "xla_fsdp", "xla"),
        ("accelerator", " XLA ", "xla"),
        ("accelerator", "quantum", None),
        ("precision", "bf16-mixed", None),
        ("strategy", "testing", None),  # extras that are not plugins
        ("strategy", "all", None),
    ],
)
def test_names_map_to_the_plugins_the_metadata_declares(requires, kind, name, plugin):
    requires(RELEASE)
    assert first_party.plugin_for(kind, name) == plugin


def test_install_commands_follow_default_plugins_and_extras(requires):
    requires(RELEASE)
    assert first_party.install_command("ddp").startswith("pip install switchyard-ddp ")
    assert "pip install ./plugins/ddp" in first_party.install_command("ddp")
    assert first_party.install_command("xla").startswith("pip install 'switchyard[xla]' ")
    assert "pip install './core[xla]'" in first_party.install_command("xla")


def test_plugins_that_do_not_exist_yet_are_never_suggested(requires):
    requires(CHECKOUT)
    assert first_party.plugin_for("strategy", "fsdp_spawn") == "fsdp"
    assert first_party.plugin_for("accelerator", "xla") is None
    assert first_party.plugin_for("strategy", "deepspeed_stage_3") is None
    registry = PluginRegistry(autoload=False, plugins=[cpu_plugin])
    with pytest.raises(SelectionError) as info:
        select(registry, accelerator="xla")
    assert "unknown accelerator 'xla'" in str(info.value)
    assert "pip install" not in str(info.value)
    with pytest.raises(SelectionError, match=r"switchyard-fsdp plugin.*'switchyard\[fsdp\]'"):
        select(registry, accelerator="cpu", strategy="fsdp")


def test_without_switchyard_metadata_there_is_no_hint(requires):
    requires(None)
    assert first_party.plugin_for("strategy", "fsdp") is None
    assert first_party.install_command("cpu") == "pip install switchyard-cpu"


def test_metadata_is_not_read_at_discovery_or_on_success(monkeypatch):
    def fail() -> None:
        raise AssertionError("switchyard's metadata was read outside an error path")

    monkeypatch.setattr(first_party, "_first_party_plugins", fail)
    registry = PluginRegistry()  # discovers the installed plugins
    registry.registrations("strategy")
    select(registry, accelerator="cpu", strategy="auto", devices=1)


def test_the_installed_switchyard_declares_its_plugins():
    # whichever way this switchyard was installed, its first-party plugins are known
    assert first_party.plugin_for("strategy", "fsdp") == "fsdp"
    assert first_party.plugin_for("strategy", "ddp_notebook") == "ddp"
    assert first_party.plugin_for("accelerator", "cpu") == "cpu"
