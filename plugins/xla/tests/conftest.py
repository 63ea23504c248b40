"""The XLA plugin's tests run in the XLA environment (scripts/test-xla: torch-xla 2.9.0 and its
torch, PJRT_DEVICE=CPU). Elsewhere they are skipped at collection, before anything imports
torch_xla; test_without_torch_xla.py is what runs there instead."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

HAS_TORCH_XLA = importlib.util.find_spec("torch_xla") is not None


@pytest.fixture(scope="session", autouse=True)
def xla_runtime() -> Iterator[None]:
    """Start XLA's runtime before any test runs a backward on the CPU: torch's autograd engine
    counts XLA's devices when it first runs, and XLA has none before its runtime starts."""
    if not HAS_TORCH_XLA or not os.environ.get("PJRT_DEVICE"):
        yield
        return
    import torch
    import torch_xla

    torch.zeros(1, device=torch_xla.device()).cpu()
    yield
