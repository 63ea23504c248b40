"""What the GPU accelerators report on a machine without their hardware, for real: the CLI a
user runs, and the GPU script's refusal. On a machine that has the hardware these are skipped;
``run_gpu.sh`` and the plugins' own ``needs_gpu`` tests run there instead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from switchyard.testing.subprocesses import child_environment

SCRIPT = Path(__file__).with_name("run_gpu.sh")
HAS_CUDA_TORCH = torch.version.cuda is not None
HAS_ROCM_TORCH = getattr(torch.version, "hip", None) is not None
HAS_MPS = torch.backends.mps.is_built() and torch.backends.mps.is_available()


def accelerators() -> dict[str, dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "switchyard", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_environment(),
        check=True,
    )
    report = json.loads(result.stdout)
    return {e["name"]: e for e in report["entries"] if e["kind"] == "accelerator"}


@pytest.mark.skipif(
    HAS_CUDA_TORCH or HAS_ROCM_TORCH or HAS_MPS, reason="this torch has GPU support"
)
def test_switchyard_plugins_lists_gpu_accelerators_as_unusable_with_reasons() -> None:
    """Real: on this CPU build of torch, `switchyard plugins --json` lists cuda, rocm and mps,
    each not usable, each with the reason its plugin gives, and auto picks another."""
    found = accelerators()
    expected = {
        "cuda": "is built without CUDA",
        "rocm": "is not a ROCm build (torch.version.hip is not set)",
        "mps": "is built without MPS",
    }
    for name, words in expected.items():
        assert name in found, f"{name} is not registered: {sorted(found)}"
        entry = found[name]
        assert entry["usable"] is False
        assert isinstance(entry["reason"], str)
        assert words in entry["reason"]
        assert torch.__version__ in entry["reason"]
        assert entry["aliases"] == ["gpu"]
    assert found["cuda"]["priority"] == found["rocm"]["priority"] == 100
    assert found["cuda"]["distribution"] == "switchyard-cuda"


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA_TORCH, reason="this torch has CUDA: run the script itself")
def test_run_gpu_script_says_there_is_no_cuda_device(tmp_path: Path) -> None:
    """Real: the GPU script, on this machine without a CUDA device, says so, lists what each
    Python lacks, prints its summary and exits 77 (nothing could run), not 0."""
    result = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=180,
        env=child_environment({"OUT": str(tmp_path), "PYTHON": sys.executable}),
    )
    assert result.returncode == 77, result.stdout + result.stderr
    assert "no CUDA device" in result.stderr
    assert f"{sys.executable}: torch {torch.__version__} is built without CUDA" in result.stderr
    assert "Traceback" not in result.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert "environment" in summary
    assert "skip" in summary
    assert "total: 0 passed, 0 failed, 1 skipped" in summary
