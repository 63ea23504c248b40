"""Checking the values users and schedulers hand to switchyard, where they enter.

The upper bounds here are where a value would exhaust the machine (a list of ``10**9`` device
indices, a host list of ``10**11`` names, a billion-node rendezvous) long before any real job
could need it; each error that enforces one names the value, the bound and what to do. The
parsers are strict: an integer is ASCII digits with an optional sign and blanks around, as every
scheduler writes it, never ``"1e3"``, ``"3_000"`` or ``"²"``.

Nothing here imports from switchyard but its errors, so every layer may use it.
"""

from __future__ import annotations

import ipaddress
import re

MAX_DEVICES_PER_NODE = 1024
"""The most devices (processes) one node may be asked for: ``devices=N``, a list of indices,
``--devices``, ``SWITCHYARD_DEVICES``, a scheduler's processes-per-node variable. The largest
machines hold a few dozen accelerators; on the CPU each process is a whole interpreter with
torch (hundreds of MB), so even a thousand is past what one machine carries."""

MAX_NUM_NODES = 65536
"""The most nodes a job may be asked for (``num_nodes``, ``--num-nodes``, a scheduler's node
count or host list); the largest clusters have about a tenth of that."""

MAX_WORLD_SIZE = MAX_DEVICES_PER_NODE * MAX_NUM_NODES
"""The most processes a job may have: a scheduler's world size, and so the bound on ranks."""

MIN_PORT, MAX_PORT = 1, 65535
"""The TCP ports a rendezvous may use (``MASTER_PORT``, ``--main-port``)."""

_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_DIGITS = 18  # beyond any bound here; keeps int() away from huge strings
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def parse_int(text: str, *, minimum: int, maximum: int) -> int:
    """``text`` as an integer in ``minimum..maximum``; a :class:`ValueError` that says which of
    "not an integer" or "out of range" it is otherwise (the caller names the variable)."""
    stripped = text.strip()
    if not _INTEGER.fullmatch(stripped):
        raise ValueError("is not an integer")
    digits = stripped.lstrip("+-").lstrip("0")
    if len(digits) > _MAX_DIGITS:
        raise ValueError(f"is out of range ({minimum}..{maximum})")
    value = int(stripped)
    if not minimum <= value <= maximum:
        raise ValueError(f"is out of range ({minimum}..{maximum})")
    return value


def parse_flag(text: str) -> bool:
    """A yes/no switch: ``1``, ``true``, ``yes``, ``on`` or ``0``, ``false``, ``no``, ``off``
    (any case, blanks around; empty is no); a :class:`ValueError` for anything else."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(
        f"is not a yes/no value; use one of {', '.join(TRUE_WORDS)} or "
        f"{', '.join(w for w in FALSE_WORDS if w)} (or leave it unset)"
    )


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot name the rendezvous host, or ``None`` if it can: an IPv4 or IPv6
    address (``[::1]`` too) or a host name (letters, digits, ``-``, ``_`` and dots, at most 253
    characters, labels of at most 63). Whether the name resolves is not checked here."""
    text = address.strip()
    if not text:
        return "is empty"
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    if ":" in text:
        return "is not a valid IPv6 address (and host names hold no ':'; give the port separately)"
    name = text[:-1] if text.endswith(".") else text
    if len(name) > 253:
        return "is longer than the 253 characters a host name may have"
    for label in name.split("."):
        if not label:
            return "has an empty part between dots"
        if len(label) > 63 or not _HOST_LABEL.fullmatch(label):
            return (
                f"is not a host name or IP address (part {label[:70]!r}: a host name holds "
                "letters, digits, '-' and '_', in dot-separated parts of at most 63 characters)"
            )
    return None


__all__ = [
    "FALSE_WORDS",
    "MAX_DEVICES_PER_NODE",
    "MAX_NUM_NODES",
    "MAX_PORT",
    "MAX_WORLD_SIZE",
    "MIN_PORT",
    "TRUE_WORDS",
    "address_problem",
    "parse_flag",
    "parse_int",
]
