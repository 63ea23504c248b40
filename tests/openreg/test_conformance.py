"""The conformance kit on OpenReg, PyTorch's reference PrivateUse1 device, through the generic
accelerator (no plugin): it passes on one device with every precision whose claim holds there,
and its autocast checks report what the mixed precisions really do.

OpenReg's autocast covers ``mm`` only, not ``addmm``: under ``bf16-mixed`` a matrix product
computes in bfloat16 while ``nn.Linear`` with a bias stays float32. The kit's autocast check
says so (and fails, since the precision does not do what it claims); this test pins that
report, so that an OpenReg gaining ``addmm`` autocast, or a kit that stopped noticing, shows up
here. Runs only in the OpenReg environment (``scripts/test-openreg``).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from switchyard.testing.subprocesses import child_environment

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch_openreg") is None,
    reason="needs the openreg environment: scripts/test-openreg",
)

TRUE_PRECISIONS = "32-true,64-true,16-true,bf16-true"
MIXED_PRECISIONS = "bf16-mixed,16-mixed"


def run_kit(tmp_path: Path, *arguments: str) -> tuple[dict[str, Any], str]:
    report = tmp_path / "report.json"
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
            "openreg",
            "--switchyard-report",
            str(report),
            "-q",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # outside the repository: only the kit's checks are collected
        env=child_environment(),
    )
    output = proc.stdout + proc.stderr
    assert report.exists(), output
    return json.loads(report.read_text(encoding="utf-8")), output


def test_the_kit_passes_on_one_device(tmp_path: Path) -> None:
    report, output = run_kit(
        tmp_path,
        "--switchyard-strategy",
        "single_device",
        "--switchyard-precision",
        TRUE_PRECISIONS,
    )
    summary = report["summary"]
    assert summary["result"] == "passed", output
    assert summary["failed"] == 0
    assert summary["skipped"] == 0  # nothing the device lacks was passed over
    families = {check["family"] for check in report["checks"]}
    assert {"entries", "accelerator", "strategy", "precision"} <= families, families
    ran = {check["id"] for check in report["checks"]}
    assert "entries.name[accelerator:openreg]" in ran


def test_the_autocast_checks_report_that_only_matmul_is_autocast(tmp_path: Path) -> None:
    report, output = run_kit(tmp_path, "--switchyard-precision", MIXED_PRECISIONS, "-k", "autocast")
    autocast = {c["id"]: c for c in report["checks"] if c["id"].startswith("accelerator.autocast")}
    low = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}
    assert set(autocast) == {f"accelerator.autocast[{name}]" for name in low}, output
    for name, dtype in low.items():
        check = autocast[f"accelerator.autocast[{name}]"]
        assert check["outcome"] == "failed", check
        assert check["details"]["computed_dtypes"] == {
            "matmul": dtype,
            "nn.Linear with bias": "float32",
        }, check
        assert "does not cover" in check["message"]
        # OpenReg has no convolution kernel at all: left out, with the reason
        assert "nn.Conv2d" in check["details"]["left_out"]
