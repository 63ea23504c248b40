"""``xla_spmd`` over two of XLA's CPU devices (CPU_NUM_DEVICES=2) trains as one device does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import xla_problems as problems
from xla_problems import HAS_TORCH_XLA, NEEDS_TORCH_XLA

pytestmark = pytest.mark.skipif(not HAS_TORCH_XLA, reason=NEEDS_TORCH_XLA)

# the mesh splits each batch's rows over two devices and the compiler adds the two halves'
# gradients: float32 sums in another order than one device's
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def spmd_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    folder = tmp_path_factory.mktemp("spmd")
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "2"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("spmd_train.py")), str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, dict[str, object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_spmd_matches_single_device_losses(
    spmd_run: dict[str, dict[str, object]], layout: str
) -> None:
    run = spmd_run[layout]
    assert run["devices"] == 2
    expected, parameters = problems.eager_cpu_losses()
    torch.testing.assert_close(run["losses"], expected, rtol=RTOL, atol=ATOL)
    assert run["optimizer_holds_module_parameters"] is True
    # every batch was split over the mesh's data axis as it was loaded
    assert all("devices=[2,1]" in spec for spec in run["batch_shardings"]), run["batch_shardings"]
    # the checkpoint holds whole tensors, gathered from the shards
    assert run["saved_matches_model"] is True
    assert run["saved_shapes"] == {k: list(v.shape) for k, v in parameters.items()}


def test_sharded_layout_shards_parameters(spmd_run: dict[str, dict[str, object]]) -> None:
    assert spmd_run["replicated"]["weight_sharding"] in ("", "{replicated}")
    assert "devices=[2,1]" in str(spmd_run["sharded"]["weight_sharding"])
