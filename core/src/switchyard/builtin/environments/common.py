"""What the cluster environments share: reading the variables a launcher exports, the
rendezvous port every process of a job derives alike, and the base of the environments whose
scheduler started the processes."""

from __future__ import annotations

import os
import socket
import zlib

from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError
from switchyard.validation import MAX_PORT, MAX_WORLD_SIZE, MIN_PORT, address_problem, parse_int

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
    if text.isascii() and text.isdigit():
        number = int(text[-9:])  # the last digits decide; never int() of a huge string
    else:
        number = zlib.crc32(text.encode("utf-8", "surrogateescape"))
    return _PORT_BASE + number % _PORT_SPAN


def int_variable(
    name: str, launcher: str, *, minimum: int = 0, maximum: int = MAX_WORLD_SIZE
) -> int:
    """The integer variable ``name``, which ``launcher`` exports in every process it starts; an
    error that says so when it is unset, not an integer, or outside ``minimum..maximum``."""
    value = _read_int(name, launcher, minimum, maximum)
    if value is None:
        raise SelectionError(
            f"{name} is not set, so this process's place in the job is unknown; {launcher} "
            f"sets it in every process it starts. Start the script through {launcher}, or "
            "choose another environment="
        )
    return value


def rank_variable(name: str, launcher: str) -> int:
    """A rank (``RANK``, ``SLURM_PROCID``...): an integer in ``0..MAX_WORLD_SIZE - 1``."""
    return int_variable(name, launcher, minimum=0, maximum=MAX_WORLD_SIZE - 1)


def size_variable(name: str, launcher: str, maximum: int = MAX_WORLD_SIZE) -> int:
    """A count of processes or nodes (``WORLD_SIZE``...): an integer in ``1..maximum``."""
    return int_variable(name, launcher, minimum=1, maximum=maximum)


def optional_rank_variable(name: str, launcher: str) -> int | None:
    """Like :func:`rank_variable`, but ``None`` when the variable is unset or blank."""
    return _read_int(name, launcher, 0, MAX_WORLD_SIZE - 1)


def optional_size_variable(name: str, launcher: str, maximum: int = MAX_WORLD_SIZE) -> int | None:
    """Like :func:`size_variable`, but ``None`` when the variable is unset or blank."""
    return _read_int(name, launcher, 1, maximum)


def port_variable(name: str, launcher: str) -> int:
    """A TCP port the launcher exports (``MASTER_PORT``): an integer in ``1..65535``."""
    return int_variable(name, launcher, minimum=MIN_PORT, maximum=MAX_PORT)


def _read_int(name: str, launcher: str, minimum: int, maximum: int) -> int | None:
    """The variable ``name`` as an integer in ``minimum..maximum``; ``None`` when unset or
    blank; a :class:`~switchyard.SelectionError` naming it, what is valid and what to do when
    it is set to anything else."""
    text = os.environ.get(name, "")
    if not text.strip():
        return None
    try:
        return parse_int(text, minimum=minimum, maximum=maximum)
    except ValueError as problem:
        raise SelectionError(
            f"{name}={_shown(text)} {problem}: {launcher} sets it to an integer in "
            f"{minimum}..{maximum}. Fix or unset {name} (is it left over from another job, or "
            "set by hand?)"
        ) from None


def _shown(text: str) -> str:
    """A variable's value for a message: quoted, and cut when it is long."""
    return repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text)} characters)"


def user_port() -> int | None:
    """``MASTER_PORT`` when the user set it, which overrides a scheduler-derived port."""
    value = os.environ.get("MASTER_PORT", "")
    if not value.strip():
        return None
    try:
        return parse_int(value, minimum=MIN_PORT, maximum=MAX_PORT)
    except ValueError:
        raise SelectionError(
            f"MASTER_PORT={_shown(value)} is not a TCP port number ({MIN_PORT}..{MAX_PORT}); "
            "set it to the rendezvous port of the node that runs rank 0, or unset it to let "
            "switchyard choose"
        ) from None


def address_variable(name: str, default: str) -> str:
    """The host-name variable ``name`` (``MASTER_ADDR``), checked to be a host name or IP
    address; ``default`` when it is unset or blank."""
    value = os.environ.get(name, "")
    if not value.strip():
        return default
    problem = address_problem(value)
    if problem is not None:
        raise SelectionError(
            f"{name}={_shown(value)} {problem}. Set it to the host name or IP address of the "
            "node that runs rank 0 (or unset it where one node runs the whole job)"
        )
    return value.strip()


def optional_int(name: str) -> int | None:
    """The integer variable ``name``, or ``None`` when it is unset or not a number: for
    ``detect()``, which must not raise; the environments' answers use the strict readers."""
    try:
        return parse_int(os.environ[name], minimum=-MAX_WORLD_SIZE, maximum=MAX_WORLD_SIZE)
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


Variable = tuple[str, int]
"""A variable's name and the integer it holds, for :func:`check_layout_consistency`."""


def check_layout_consistency(
    launcher: str,
    *,
    rank: Variable,
    world_size: Variable,
    local_rank: Variable | None = None,
    local_world_size: Variable | None = None,
    node_rank: Variable | None = None,
    num_nodes: Variable | None = None,
) -> None:
    """Refuse cluster variables that no job can have together: a rank at or above the world
    size, a negative one, a local rank at or above the processes on the node, more processes on
    a node than in the job, a node rank at or above the number of nodes. Each environment calls
    it from ``validate_settings``, which selection runs before any store or process group is
    created: with such values the rendezvous would wait for ranks that do not exist until it
    times out. The :class:`~switchyard.SelectionError` names each variable and its value.

    (Whether each value is an integer at all is checked where it is read; this only compares
    them.)"""
    problems: list[str] = []

    def below(index: Variable, size: Variable, what: str) -> None:
        (index_name, index_value), (size_name, size_value) = index, size
        if index_value < 0:
            problems.append(f"{index_name}={index_value} is negative ({what} count from 0)")
        elif index_value >= size_value:
            problems.append(
                f"{index_name}={index_value} is not below {size_name}={size_value} ({what} "
                f"are 0..{size_value - 1})"
            )

    for size in (world_size, local_world_size, num_nodes):
        if size is not None and size[1] < 1:
            problems.append(f"{size[0]}={size[1]} is not a count of processes or nodes (>= 1)")
    if not problems:
        below(rank, world_size, "ranks")
        if local_rank is not None and local_world_size is not None:
            below(local_rank, local_world_size, "local ranks")
        elif local_rank is not None and local_rank[1] < 0:
            problems.append(
                f"{local_rank[0]}={local_rank[1]} is negative (local ranks count from 0)"
            )
        if local_world_size is not None and local_world_size[1] > world_size[1]:
            problems.append(
                f"{local_world_size[0]}={local_world_size[1]} processes on this node is more "
                f"than {world_size[0]}={world_size[1]} in the whole job"
            )
        if node_rank is not None and num_nodes is not None:
            below(node_rank, num_nodes, "node ranks")
        elif node_rank is not None and node_rank[1] < 0:
            problems.append(f"{node_rank[0]}={node_rank[1]} is negative (node ranks count from 0)")
    if problems:
        raise SelectionError(
            f"the variables {launcher} exported are inconsistent: {'; '.join(problems)}. The job "
            "would wait in the rendezvous for processes that do not exist. They were changed by "
            f"hand or left over from another job: unset them, or start the script through "
            f"{launcher} unchanged (see 'switchyard env')"
        )
