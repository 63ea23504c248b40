"""The kit as a pytest plugin: inert without a selection, collected only on request, beside a
project's own tests when paths are given, clear about wrong choices, and wrapped by
``switchyard conformance``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import switchyard.testing.plugin as kit_plugin
from switchyard.testing import KitConfig, KitUsageError
from switchyard.testing.subprocesses import child_environment

RunKit = Callable[..., Any]


def pytest_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = child_environment(import_path=False, plugin_switches=False)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def test_plugin_does_nothing_without_a_selection(tmp_path: Path) -> None:
    # not even when the kit's own folder is named: its modules are not test_*.py
    (tmp_path / "test_mine.py").write_text("def test_mine():\n    pass\n")
    proc = pytest_run(
        "-p", "switchyard.testing", "-q", "test_mine.py", str(kit_plugin.SUITE_DIR), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert "switchyard conformance" not in proc.stdout


def test_kit_runs_beside_the_paths_given(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text("def test_mine():\n    pass\n")
    proc = pytest_run(
        "-p",
        "switchyard.testing",
        "test_mine.py",
        "--switchyard-accelerator",
        "cpu",
        "-k",
        "mine or availability",
        "-v",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_mine.py::test_mine PASSED" in proc.stdout
    assert "accelerator.py::test_availability PASSED" in proc.stdout
    assert "switchyard conformance: passed (1 passed" in proc.stdout


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ({"accelerator": "cpuu"}, "unknown accelerator 'cpuu'. Did you mean 'cpu'?"),
        (
            {"strategy": "single_device", "devices": "2"},
            "runs one process on one device (distributed=False), but --switchyard-devices=2",
        ),
        ({"strategy": "ddp", "devices": "zero"}, "must be a positive number of processes"),
        ({}, "needs something to check"),
    ],
    ids=["unknown-name", "single-device-on-two", "bad-devices", "nothing"],
)
def test_wrong_choices_are_explained(choices: dict[str, str], message: str) -> None:
    with pytest.raises(KitUsageError) as caught:
        KitConfig(**choices)
    assert message in str(caught.value)


def test_wrong_choices_are_pytest_usage_errors(tmp_path: Path) -> None:
    proc = pytest_run("-p", "switchyard.testing", "--switchyard-accelerator", "cpuu", cwd=tmp_path)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert "switchyard conformance kit: unknown accelerator 'cpuu'" in proc.stderr
    proc = pytest_run("-p", "switchyard.testing", "--switchyard-report", "r.json", cwd=tmp_path)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert "need a selection" in proc.stderr


def test_strategy_checks_run_on_the_accelerator_they_support() -> None:
    kit = KitConfig(strategy="ddp")
    # the highest-priority accelerator usable here (cpu on a machine without others)
    assert kit.hardware is not None
    assert kit.hardware.entry.load().unavailable_reason() is None
    assert kit.devices == 2
    assert kit.families == ("entries", "strategy")
    assert [p.name for p in kit.plugins_under_test()] == ["ddp"]
    claimed = KitConfig(accelerator="cpu").precision_cases
    assert {c.name for c in claimed} >= {"32-true", "bf16-mixed"}


def test_switchyard_conformance_command_wraps_pytest(tmp_path: Path) -> None:
    report = tmp_path / "out" / "report.json"
    env = child_environment(import_path=False, plugin_switches=False)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "switchyard",
            "conformance",
            "--accelerator",
            "cpu",
            "--report",
            str(report),
            "--",
            "-k",
            "availability or parse_devices",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["summary"] == {
        "result": "passed",
        "total": 2,
        "passed": 2,
        "failed": 0,
        "skipped": 0,
        "not run": 0,
    }
    assert {c["id"] for c in data["checks"]} == {
        "accelerator.availability",
        "accelerator.parse_devices",
    }
