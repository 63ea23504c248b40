"""Run switchyard's conformance kit on this plugin's entries, as CI does, and keep the report.

The same as running, in this folder::

    pytest -p switchyard.testing --switchyard-accelerator example_cpu \
        --switchyard-strategy example_allreduce --switchyard-devices 2 \
        --switchyard-report conformance-report.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPORT = os.environ.get("CONFORMANCE_REPORT")  # set in CI to publish the report


def test_passes_the_switchyard_conformance_kit(tmp_path: Path) -> None:
    report = Path(REPORT) if REPORT else tmp_path / "conformance-report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "switchyard.testing",
            "-p",
            "no:cacheprovider",
            "--switchyard-accelerator",
            "example_cpu",
            "--switchyard-strategy",
            "example_allreduce",
            "--switchyard-devices",
            "2",
            "--switchyard-report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # no paths and no testpaths here: only the kit runs
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(report.read_text())
    assert result["summary"]["result"] == "passed", result["summary"]
    assert {p["distribution"] for p in result["plugins"]} == {"switchyard-example"}
