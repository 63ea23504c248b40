"""Slurm jobs started with ``srun``, and reading Slurm's host lists and task counts."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator

from switchyard.builtin.environments.common import (
    SchedulerManaged,
    address_variable,
    check_layout_consistency,
    derived_port,
    first_set,
    optional_int,
    optional_rank_variable,
    optional_size_variable,
    rank_variable,
    size_variable,
    user_port,
)
from switchyard.environment import DEFAULT_MAIN_PORT
from switchyard.errors import SelectionError
from switchyard.validation import MAX_DEVICES_PER_NODE, MAX_NUM_NODES, address_problem

_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_TASKS_ITEM = re.compile(r"^([0-9]+)(?:\(x([0-9]+)\))?$")
_DIGITS = re.compile(r"[0-9]+")
_SLURM_INTERACTIVE_NAMES = ("bash", "interactive")


def _split_hostlist(hostlist: str) -> list[str]:
    """Split at commas and whitespace outside brackets."""
    items: list[str] = []
    depth = 0
    current: list[str] = []
    for char in hostlist:
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"host list {hostlist!r} has nested brackets")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"host list {hostlist!r} has an unmatched ']'")
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise ValueError(f"host list {hostlist!r} has an unmatched '['")
    if current:
        items.append("".join(current))
    return items


def _range_set(spec: str, hostlist: str) -> list[tuple[int, int, int]]:
    """``"001-003,007"`` -> ``[(1, 3, 3), (7, 7, 3)]``: (low, high, width) of each part, checked
    but not expanded (``n[1-99999999999]`` must not build a list); the lower bound's width pads."""
    ranges: list[tuple[int, int, int]] = []
    for part in spec.split(","):
        low, sep, high = part.strip().partition("-")
        if not _DIGITS.fullmatch(low) or (sep and not _DIGITS.fullmatch(high)):
            raise ValueError(f"host list {hostlist!r}: {part!r} is not a number or range")
        if not sep:
            high = low
        if int(high) < int(low):
            raise ValueError(f"host list {hostlist!r}: range {part!r} runs backwards")
        ranges.append((int(low), int(high), len(low)))
    return ranges


def _expand_ranges(ranges: list[tuple[int, int, int]]) -> Iterator[str]:
    for low, high, width in ranges:
        for number in range(low, high + 1):
            yield f"{number:0{width}d}"


def _product(texts: list[str], groups: list[list[tuple[int, int, int]]]) -> Iterator[str]:
    """``texts[0] + v0 + texts[1] + v1 + ... + texts[-1]`` for each choice of one value ``vi``
    per bracket group, in order; lazily, so the first host of a huge list costs nothing."""
    if not groups:
        yield texts[0]
        return
    for value in _expand_ranges(groups[0]):
        for rest in _product(texts[1:], groups[1:]):
            yield texts[0] + value + rest


def iter_hostlist(hostlist: str) -> Iterator[str]:
    """The host names of a Slurm host list, in order, one item at a time.

    Understands what ``SLURM_NODELIST`` holds: comma- (or space-) separated items, each with
    any number of bracket groups of numbers and ranges that keep zero padding:
    ``"node[001-003,007],rack-b[1-2]"`` is ``node001 node002 node003 node007 rack-b1 rack-b2``;
    ``"r[1-2]-n[01-02]"`` is ``r1-n01 r1-n02 r2-n01 r2-n02``. Raises :class:`ValueError` for
    malformed lists.
    """
    items = _split_hostlist(hostlist)
    if not items:
        raise ValueError(f"host list {hostlist!r} names no host")
    parsed = []
    for item in items:  # every item is checked before the first host is given
        literals = _BRACKET.split(item)  # literal, range, literal, range, ..., literal
        if any(c in "[]" for c in "".join(literals[::2])):
            raise ValueError(f"host list {hostlist!r}: cannot read {item!r}")
        parsed.append((literals[::2], [_range_set(spec, hostlist) for spec in literals[1::2]]))
    for texts, groups in parsed:
        yield from _product(texts, groups)


def expand_hostlist(hostlist: str, limit: int = MAX_NUM_NODES) -> list[str]:
    """Every host name of a Slurm host list (see :func:`iter_hostlist`); a :class:`ValueError`
    when it names more than ``limit`` hosts, rather than filling the memory."""
    hosts = list(itertools.islice(iter_hostlist(hostlist), limit + 1))
    if len(hosts) > limit:
        raise ValueError(f"host list {hostlist[:80]!r} names more than {limit} hosts")
    return hosts


def first_host(hostlist: str) -> str:
    """The first host of a Slurm host list, without expanding the rest."""
    return next(iter_hostlist(hostlist))


def parse_tasks_per_node(text: str) -> list[int]:
    """Slurm's ``SLURM_TASKS_PER_NODE`` format, one count per node: ``"4(x2)"`` is ``[4, 4]``,
    ``"3(x2),2"`` is ``[3, 3, 2]``. Raises :class:`ValueError` for anything else."""
    counts: list[int] = []
    for item in text.split(","):
        match = _TASKS_ITEM.match(item.strip())
        if match is None:
            raise ValueError(f"tasks per node {text!r}: cannot read {item!r}")
        count, repeat = match.group(1), match.group(2) or "1"
        if len(repeat) > 6 or len(counts) + int(repeat) > MAX_NUM_NODES:
            raise ValueError(
                f"tasks per node {text[:80]!r} describes more than {MAX_NUM_NODES} nodes"
            )
        if len(count) > 6 or int(count) > MAX_DEVICES_PER_NODE:
            raise ValueError(
                f"tasks per node {text[:80]!r}: {count} tasks on one node is more than "
                f"{MAX_DEVICES_PER_NODE}"
            )
        counts += [int(count)] * int(repeat)
    return counts


class SLURMEnvironment(SchedulerManaged):
    """Processes started by Slurm's ``srun``, one task per device.

    Detected when ``SLURM_NTASKS`` is set and either ``SLURM_STEP_ID`` (only srun sets it) is
    set or ``SLURM_NTASKS`` is above 1 (a batch script that asked for several tasks but runs
    Python without srun: detected so that :meth:`validate_settings` can say so instead of
    letting one process wait for peers that never start). A job named ``bash`` or
    ``interactive`` (``salloc``, ``srun --pty bash``, or ``--job-name=interactive``) is not
    detected: there the user starts processes by hand or lets switchyard start them.

    Reads ``SLURM_PROCID`` (rank), ``SLURM_LOCALID`` (local rank), ``SLURM_NODEID`` (node
    rank), ``SLURM_STEP_NUM_TASKS`` or ``SLURM_NTASKS`` (world size), the step's node list
    (``SLURM_STEP_NODELIST``, ``SLURM_NODELIST`` or ``SLURM_JOB_NODELIST``, whose first host is
    the main address unless ``MASTER_ADDR`` is set), ``SLURM_JOB_ID`` (the main port is
    :func:`derived_port` of it unless ``MASTER_PORT`` is set), and for validation the tasks per
    node (``SLURM_STEP_TASKS_PER_NODE``, ``SLURM_TASKS_PER_NODE`` or ``SLURM_NTASKS_PER_NODE``)
    and the node count (``SLURM_STEP_NUM_NODES``, ``SLURM_NNODES`` or ``SLURM_JOB_NUM_NODES``).
    """

    _launcher = "srun"

    @classmethod
    def detect(cls) -> bool:
        if os.environ.get("SLURM_JOB_NAME") in _SLURM_INTERACTIVE_NAMES:
            return False
        if not os.environ.get("SLURM_NTASKS", "").strip():
            return False
        ntasks = optional_int("SLURM_NTASKS")
        # a value that is not a number is detected too, so that world_size() names it
        return "SLURM_STEP_ID" in os.environ or ntasks is None or ntasks > 1

    @property
    def creates_processes_externally(self) -> bool:
        return "SLURM_STEP_ID" in os.environ

    @property
    def main_address(self) -> str:
        if os.environ.get("MASTER_ADDR", "").strip():
            return address_variable("MASTER_ADDR", "")
        found = first_set("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
        if found is None:
            raise SelectionError(
                "Slurm exported no node list (SLURM_NODELIST), so the main node is unknown; "
                "export MASTER_ADDR with the host name of the node that runs task 0"
            )
        name, value = found
        try:
            host = first_host(value)
        except ValueError as error:
            raise SelectionError(
                f"{name}={value[:80]!r} cannot be read ({error}); export MASTER_ADDR with the "
                "host name of the node that runs task 0"
            ) from None
        problem = address_problem(host)
        if problem is not None:
            raise SelectionError(
                f"{name}={value[:80]!r}: its first host {host[:80]!r} {problem}; export "
                "MASTER_ADDR with the host name of the node that runs task 0"
            )
        return host

    @property
    def main_port(self) -> int:
        port = user_port()
        if port is not None:
            return port
        job_id = os.environ.get("SLURM_JOB_ID", "").strip()
        return derived_port(job_id) if job_id else DEFAULT_MAIN_PORT

    def world_size(self) -> int:
        step = optional_size_variable("SLURM_STEP_NUM_TASKS", self._launcher)
        if step is not None:
            return step
        return size_variable("SLURM_NTASKS", self._launcher)

    def global_rank(self) -> int:
        return rank_variable("SLURM_PROCID", self._launcher)

    def local_rank(self) -> int:
        return rank_variable("SLURM_LOCALID", self._launcher)

    def node_rank(self) -> int:
        return rank_variable("SLURM_NODEID", self._launcher)

    def local_world_size(self) -> int | None:
        counts = self.tasks_per_node()
        node = optional_rank_variable("SLURM_NODEID", self._launcher)
        if not counts or node is None:
            return None
        return counts[node] if node < len(counts) else None

    def tasks_per_node(self) -> list[int] | None:
        """Tasks on each node of the step, or ``None`` if Slurm did not say."""
        found = first_set(
            "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"
        )
        if found is None:
            return None
        name, value = found
        try:
            counts = parse_tasks_per_node(value)
        except ValueError as error:
            raise SelectionError(
                f"{name}={value[:80]!r} cannot be read as tasks per node ({error}); Slurm writes "
                "counts such as '4' or '4(x2),3'. Fix or unset it"
            ) from None
        if name == "SLURM_NTASKS_PER_NODE":
            nodes = self.num_nodes()
            counts = counts * (nodes or 1) if len(counts) == 1 else counts
        return counts

    def num_nodes(self) -> int | None:
        """Nodes of the step, or ``None`` if Slurm did not say."""
        for name in ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"):
            value = optional_size_variable(name, self._launcher, MAX_NUM_NODES)
            if value is not None:
                return value
        return None

    def _check_layout(self) -> None:
        """Inconsistent Slurm variables (``SLURM_PROCID`` at or above the number of tasks...)
        fail here, before any store is created (:func:`check_layout_consistency`)."""
        world = "SLURM_STEP_NUM_TASKS" if first_set("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
        per_node, nodes = self.local_world_size(), self.num_nodes()
        per_node_name = first_set(
            "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"
        )
        nodes_name = first_set("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
        check_layout_consistency(
            self._launcher,
            rank=("SLURM_PROCID", self.global_rank()),
            world_size=(world, self.world_size()),
            local_rank=("SLURM_LOCALID", self.local_rank()),
            local_world_size=None
            if per_node is None or per_node_name is None
            else (f"this node's count in {per_node_name[0]}", per_node),
            node_rank=("SLURM_NODEID", self.node_rank()),
            num_nodes=self._node_count(nodes, nodes_name, per_node_name),
        )

    def _node_count(
        self,
        nodes: int | None,
        nodes_name: tuple[str, str] | None,
        per_node_name: tuple[str, str] | None,
    ) -> tuple[str, int] | None:
        """What bounds ``SLURM_NODEID``: the node count Slurm exported, else the nodes its
        tasks-per-node list covers (a node id past that list has no task count at all)."""
        if nodes is not None and nodes_name is not None:
            return (nodes_name[0], nodes)
        counts = self.tasks_per_node()
        if counts and per_node_name is not None and per_node_name[0] != "SLURM_NTASKS_PER_NODE":
            return (f"len({per_node_name[0]})", len(counts))
        return None

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        ntasks = self.world_size()
        if not self.creates_processes_externally:
            raise SelectionError(
                f"Slurm allocated {ntasks} tasks, but this process was not started by srun "
                f"(SLURM_STEP_ID is not set), so the other {ntasks - 1} will never start and "
                "this one would wait for them forever. In the batch script run `srun python "
                "...` instead of `python ...`; or, to let switchyard start the processes "
                "itself on a single node, submit with --nodes=1 --ntasks=1 (or name the job "
                "'interactive')"
            )
        per_node = self.tasks_per_node()
        if per_node is not None and len(set(per_node)) > 1:
            spread = ", ".join(map(str, per_node))
            raise SelectionError(
                f"Slurm placed an uneven number of tasks on the nodes ({spread}), but every "
                f"node must run devices={num_devices}. Request "
                f"--ntasks-per-node={num_devices} (with --nodes={num_nodes}) instead of --ntasks"
            )
        if per_node is not None and per_node[0] != num_devices:
            raise SelectionError(
                f"Slurm runs {per_node[0]} task(s) per node, one process each, but the runtime "
                f"asks for devices={num_devices} per node. Either pass devices={per_node[0]}, "
                f"or request #SBATCH --ntasks-per-node={num_devices}"
            )
        nodes = self.num_nodes()
        if nodes is not None and nodes != num_nodes:
            raise SelectionError(
                f"Slurm runs this job step on {nodes} node(s), but the runtime asks for "
                f"num_nodes={num_nodes}. Either pass num_nodes={nodes}, or request "
                f"#SBATCH --nodes={num_nodes}"
            )
        if ntasks != num_devices * num_nodes:
            raise SelectionError(
                f"Slurm started {ntasks} task(s), but the runtime asks for devices={num_devices} "
                f"x num_nodes={num_nodes} = {num_devices * num_nodes}. Request "
                f"#SBATCH --nodes={num_nodes} --ntasks-per-node={num_devices}"
            )
        # after the layout checks, whose advice is about the user's own choices
        self._check_layout()
