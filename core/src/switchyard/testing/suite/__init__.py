"""The conformance checks, one module per family: ``entries``, ``accelerator``, ``precision``,
``strategy``. Their names do not match ``test_*.py``: pytest collects them only through the
``switchyard.testing`` plugin, and only the families a selection asks for."""

from __future__ import annotations

from typing import NoReturn

import pytest


def fail(message: str) -> NoReturn:
    """Fail the check with ``message`` alone: no traceback into the kit, and no "during handling
    of the above exception" chain, since the message already names the cause."""
    raise pytest.fail.Exception(message, pytrace=False) from None
