"""Every test starts with no ``SWITCHYARD_*`` variable and a fresh process-wide registry, as the
cross-package tests do (tests/conftest.py does not reach this folder)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from switchyard.registry import reset_default_registry


@pytest.fixture(autouse=True)
def _clean_switchyard_state() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("SWITCHYARD_")}
    for key in saved:
        del os.environ[key]
    reset_default_registry()
    yield
    for key in [k for k in os.environ if k.startswith("SWITCHYARD_")]:
        del os.environ[key]
    os.environ.update(saved)
    reset_default_registry()
