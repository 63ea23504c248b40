"""How long switchyard's waits for a missing peer may last, and how a timeout is spelled.

Kept apart from :mod:`switchyard.parallel` so that ``Runtime()`` can read and check a timeout
without importing ``torch.distributed`` where no process group is ever made.
"""

from __future__ import annotations

import math
from datetime import timedelta

from switchyard.errors import SelectionError

DEFAULT_TIMEOUT = timedelta(minutes=10)
"""How long a collective, the creation of the process group and torchrun's rendezvous wait for a
missing peer unless ``Runtime(timeout=...)``, ``switchyard run --timeout`` or the strategy's
``timeout=`` says otherwise: torch's own default for NCCL process groups, instead of the
30 minutes of silence gloo's default gives. Work one rank does while the others wait at a
collective (rank 0 writing a large checkpoint, a download in ``rank_zero_first()``) must fit in
it."""

MAX_TIMEOUT = timedelta(days=7)
"""The longest timeout accepted."""

TIMEOUT_VARIABLE = "SWITCHYARD_TIMEOUT"
"""How ``switchyard run --timeout`` hands its timeout (seconds) to the script's ``Runtime()``."""


def parse_timeout(value: object, source: str = "timeout") -> timedelta:
    """``value`` (seconds as a number, or a ``timedelta``; a number in a string when ``source``
    is a variable) as a timeout: positive and at most :data:`MAX_TIMEOUT`. A
    :class:`~switchyard.SelectionError` naming ``source`` otherwise."""
    seconds: float | None = None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and source != "timeout":
        try:
            seconds = float(value.strip())
        except ValueError:
            seconds = None
    limit = int(MAX_TIMEOUT.total_seconds())
    if seconds is None or not math.isfinite(seconds) or not 0 < seconds <= limit:
        spelled = f"{source}={value!r}"
        raise SelectionError(
            f"{spelled} is not a timeout: give the seconds a collective may wait for a missing "
            f"peer, a number above 0 and at most {limit} (7 days), or a datetime.timedelta; the "
            f"default is {int(DEFAULT_TIMEOUT.total_seconds())} s"
        )
    return timedelta(seconds=seconds)
