"""The third-party template, examples/plugin-template: an outside distribution that switchyard
discovers with no change to core, and that passes the kit through its own test suite."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import pytest

from switchyard.registry import PluginRegistry

TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "plugin-template"


@pytest.fixture(scope="module")
def template() -> importlib.metadata.Distribution:
    try:
        distribution = importlib.metadata.distribution("switchyard-example")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            "the template plugin is not installed: pip install -e examples/plugin-template "
            "(scripts/env.sh does it)",
            pytrace=False,
        )
    return distribution


def test_installed_from_its_folder_and_found_through_its_entry_point(
    template: importlib.metadata.Distribution,
) -> None:
    import switchyard_example

    assert Path(switchyard_example.__file__).resolve().is_relative_to(TEMPLATE / "src")
    (entry_point,) = [ep for ep in template.entry_points if ep.group == "switchyard"]
    assert (entry_point.name, entry_point.value) == ("example", "switchyard_example.plugin")
    registry = PluginRegistry()
    accelerator = registry.get("accelerator", "example_cpu")
    strategy = registry.get("strategy", "example_allreduce")
    assert accelerator is not None
    assert strategy is not None
    assert accelerator.plugin.distribution == strategy.plugin.distribution == "switchyard-example"
    assert accelerator.plugin.source == "entry-point"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.kit_session(suite=TEMPLATE)  # `python -m pytest -q` there, started ahead
def test_template_test_suite_passes_the_kit(
    template: importlib.metadata.Distribution, kit: subprocess.CompletedProcess[str]
) -> None:
    proc = kit
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_conformance" in proc.stdout or "passed" in proc.stdout
