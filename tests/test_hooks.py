"""Hook implementations are checked when a plugin registers: a misspelt hook, a known hook's
function left unmarked, or a wrapper on a hook switchyard calls one plugin at a time makes the
plugin a recorded failure (named with its distribution, shown by ``switchyard plugins``), never
a silent no-op; the other plugins are unaffected. Also: ``switchyard_env_report``."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from switchyard import AcceleratorEntry, hookimpl
from switchyard.registry import PluginRegistry
from switchyard.testing.subprocesses import child_environment

GOOD = """
from switchyard import AcceleratorEntry, hookimpl

@hookimpl
def switchyard_accelerators():
    yield AcceleratorEntry(name="good_npu", factory="{module}:Accel", priority=-50)

@hookimpl
def switchyard_env_report():
    return {{"versions": {{"good-engine": "9.9"}}, "variables": ("GOOD_NPU_",), "mode": "fast"}}
"""

BROKEN = {
    "misspelt": """
        from switchyard import AcceleratorEntry, hookimpl

        @hookimpl
        def switchyard_accelerator():
            return AcceleratorEntry(name="typo_npu", factory="x.y:Z")
    """,
    "unmarked": """
        from switchyard import AcceleratorEntry

        def switchyard_accelerators():
            return AcceleratorEntry(name="unmarked_npu", factory="x.y:Z")
    """,
    "wrapper": """
        from switchyard import AcceleratorEntry, hookimpl

        @hookimpl(wrapper=True)
        def switchyard_accelerators():
            result = yield
            return result
    """,
    "hookwrapper_teardown": """
        from switchyard import hookimpl

        @hookimpl(hookwrapper=True)
        def switchyard_runtime_teardown(runtime):
            yield
    """,
}

EXPECTED = {
    "misspelt": "'switchyard_accelerator' is not a switchyard hook (did you mean 'switchyard_accelerators'?)",
    "unmarked": "'switchyard_accelerators' is defined but not marked with @switchyard.hookimpl",
    "wrapper": "'switchyard_accelerators' is marked as a wrapper",
    "hookwrapper_teardown": "'switchyard_runtime_teardown' is marked as a wrapper",
}


@pytest.fixture
def site_with_broken_hooks(plugin_site: Any) -> Any:
    good = plugin_site.name("good_plugin")
    plugin_site.module("good_plugin", GOOD.format(module=good))
    plugin_site.distribution("switchyard-good", entry_points={"good": good})
    for name, source in BROKEN.items():
        module = plugin_site.module(f"{name}_plugin", source)
        plugin_site.distribution(f"switchyard-{name}", entry_points={name: module})
    return plugin_site


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_badly_declared_hooks_make_the_plugin_a_recorded_failure(
    site_with_broken_hooks: Any, name: str
) -> None:
    registry = PluginRegistry()
    assert name not in registry.plugins
    (failure,) = [f for f in registry.failures if f.plugin.name == name]
    assert failure.stage == "register"
    assert failure.plugin.distribution == f"switchyard-{name}"
    assert EXPECTED[name] in failure.error
    assert "switchyard.hookspecs" in failure.error
    # the others are untouched
    assert "good" in registry.plugins
    assert registry.get("accelerator", "good_npu") is not None
    registry.manager.check_pending()  # nothing unverified stays registered


def test_switchyard_plugins_shows_the_hook_failures(site_with_broken_hooks: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "switchyard", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_environment(),
        check=True,
    )
    failures = {f["plugin"]: f for f in json.loads(proc.stdout)["failures"]}
    for name, expected in EXPECTED.items():
        assert expected in failures[name]["error"]


def test_an_explicit_plugin_object_is_checked_too() -> None:
    class Vendor:
        @hookimpl
        def switchyard_strategy(self) -> None:  # misspelt
            return None

    registry = PluginRegistry([Vendor()])
    (failure,) = [f for f in registry.failures if f.plugin.source == "explicit"]
    assert "'switchyard_strategy' is not a switchyard hook" in failure.error


def test_env_report_hook_reaches_switchyard_env(
    site_with_broken_hooks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from switchyard.cli import env_report

    monkeypatch.setenv("GOOD_NPU_VISIBLE", "0,1")
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    report = env_report(PluginRegistry())
    assert report["versions"]["good-engine"] == "9.9"
    assert report["plugin_reports"]["good"] == {"mode": "fast"}
    assert report["environment_variables"]["GOOD_NPU_VISIBLE"] == "0,1"
    assert "UNRELATED_VARIABLE" not in report["environment_variables"]


def test_an_env_report_that_raises_is_recorded_and_the_others_shown() -> None:
    class Raising:
        @hookimpl
        def switchyard_env_report(self) -> dict[str, Any]:
            raise RuntimeError("driver query failed")

    class Wrong:
        @hookimpl
        def switchyard_env_report(self) -> list[str]:
            return ["not", "a", "mapping"]

    class Fine:
        @hookimpl
        def switchyard_accelerators(self) -> None:
            return None

        @hookimpl
        def switchyard_env_report(self) -> dict[str, Any]:
            return {"versions": {"fine": "1"}}

    registry = PluginRegistry([Raising(), Wrong(), Fine()])
    reports = registry.env_reports()
    assert [dict(r) for _, r in reports if "versions" in r and "fine" in r["versions"]]
    errors = [f.error for f in registry.failures if f.stage == "switchyard_env_report"]
    assert any("driver query failed" in e for e in errors)
    assert any("must return a mapping" in e for e in errors)


def test_entries_from_a_well_formed_plugin_object_still_register() -> None:
    class Vendor:
        @hookimpl
        def switchyard_accelerators(self) -> AcceleratorEntry:
            return AcceleratorEntry(name="fine_npu", factory="x.y:Z")

    registry = PluginRegistry([Vendor()])
    assert registry.get("accelerator", "fine_npu") is not None
    assert not registry.failures
