"""What the cluster environments share: reading the variables a launcher exports, the
rendezvous port every process of a job derives alike, and the base of the environments whose
scheduler started the processes."""

from __future__ import annotations

import os
import socket
import zlib

from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError

_PORT_BASE = 10000
_PORT_SPAN = 10000


def find_free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``address`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def derived_port(job_id: str) -> int:
    """The rendezvous port every process of a job computes alike from the scheduler's job id.

    ``10000 + job_id % 10000``, i.e. ``10000`` plus the last four digits: inside
    ``10000..19999``, below Linux's ephemeral range (32768 and up) so the OS never hands it to
    another program's outgoing connection, and distinct for jobs whose ids differ by less than
    10000. A non-numeric id is hashed (CRC-32) into the same range. ``MASTER_PORT`` overrides it.
    """
    text = job_id.strip()
    number = int(text) if text.isdigit() else zlib.crc32(text.encode())
    return _PORT_BASE + number % _PORT_SPAN


def int_variable(name: str, launcher: str) -> int:
    """The integer variable ``name``, which ``launcher`` exports in every process it starts; an
    error that says so when it is unset or not a number."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise SelectionError(
            f"{name} is not set, so this process's place in the job is unknown; {launcher} "
            f"sets it in every process it starts. Start the script through {launcher}, or "
            "choose another environment="
        )
    try:
        return int(value)
    except ValueError:
        raise SelectionError(
            f"{name}={value!r} is not an integer ({launcher} sets it to one); fix or unset it"
        ) from None


def user_port() -> int | None:
    """``MASTER_PORT`` when the user set it, which overrides a scheduler-derived port."""
    value = os.environ.get("MASTER_PORT", "").strip()
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SelectionError(f"MASTER_PORT={value!r} is not a TCP port number (1..65535)")
    return int(value)


def optional_int(name: str) -> int | None:
    """The integer variable ``name``, or ``None`` when it is unset or not a number."""
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


class SchedulerManaged(ClusterEnvironment):
    """Base of environments whose launcher started every process and fixed the ranks: the
    values switchyard computes are ignored (the launcher's are the truth, and the strategy
    checks that they agree)."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    def set_world_size(self, size: int) -> None:
        pass

    def set_global_rank(self, rank: int) -> None:
        pass


def first_set(*names: str) -> tuple[str, str] | None:
    """``(name, value)`` of the first of ``names`` set to more than blanks, or ``None``."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return name, value
    return None
