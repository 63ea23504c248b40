"""The conformance kit for the GPU accelerators, for real, on a machine without their hardware.

Every entry check passes (discovery imports nothing heavy, factories import and fit), so does
the availability check (the declarations agree with each other), and every check that needs a
device is skipped with the plugin's own reason, never counted as passed. Where the hardware is
present, ``run_gpu.sh`` runs the kit there instead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from switchyard.testing.subprocesses import child_environment

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NO_GPU_TORCH = (
    torch.version.cuda is None
    and getattr(torch.version, "hip", None) is None
    and not torch.backends.mps.is_built()
)
WHY = {
    "cuda": "is built without CUDA",
    "rocm": "is not a ROCm build",
    "mps": "is built without MPS",
}


@pytest.mark.skipif(not NO_GPU_TORCH, reason="this torch has GPU support: run_gpu.sh applies")
@pytest.mark.parametrize("accelerator", sorted(WHY))
def test_kit_passes_entries_and_skips_hardware_checks(tmp_path: Path, accelerator: str) -> None:
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "switchyard.testing",
            "-p",
            "no:cacheprovider",
            "-q",
            "--switchyard-accelerator",
            accelerator,
            "--switchyard-report",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=child_environment(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["summary"]["result"] == "incomplete"
    assert report["summary"]["failed"] == 0
    checks = {c["id"]: c for c in report["checks"]}
    entries = [c for c in checks.values() if c["family"] == "entries"]
    assert entries
    assert all(c["outcome"] == "passed" for c in entries), entries
    assert checks[f"entries.discovery_is_light[{accelerator}]"]["outcome"] == "passed"
    # the one accelerator check that needs no device: the declarations agree with each other
    assert checks["accelerator.availability"]["outcome"] == "passed"
    hardware = [
        c
        for c in checks.values()
        if c["family"] in ("accelerator", "precision") and c["id"] != "accelerator.availability"
    ]
    assert hardware
    for check in hardware:
        assert check["outcome"] == "skipped", check
        assert WHY[accelerator] in check["message"], check
    assert report["devices"]["available"] is False
