"""Cluster environments built into core, registered through ``switchyard_environments``.

Each environment answers, from the variables its scheduler or launcher exports, where the
rendezvous is (``main_address``, ``main_port``) and where this process sits (ranks and sizes).
None of them writes ``os.environ``: the strategy exports ``MASTER_ADDR``/``MASTER_PORT`` from
:attr:`~switchyard.ClusterEnvironment.main_address` and ``main_port`` when it creates the process
group. ``detect()`` reads only variables; LSF also reads the rank file its variable points to.

Priorities (higher wins among the detected ones; set in :mod:`switchyard.builtin`). The rule is
*the innermost launcher wins*: the program that started this very process describes it better
than an allocation around it.

===============  ========  ==================================================================
name             priority  why there
===============  ========  ==================================================================
``torchelastic``  100      torchrun is often started by srun, jsrun, mpirun or in a pod; its
                           variables describe the worker, the outer ones describe torchrun.
``lsf``            80      jsrun also exports ``OMPI_COMM_WORLD_*`` (its MPI is Open MPI based);
                           LSF finds the main address in the rank file, MPI would need
                           ``MASTER_ADDR``.
``mpi``            70      ``mpirun`` inside a Slurm allocation starts its daemons with srun, so
                           its processes inherit the variables of that daemon step (one task per
                           node); the MPI variables are the true ones.
``slurm``          60      srun.
``kubeflow``       20      only generic names (``MASTER_ADDR``, ``RANK``...) plus a Kubernetes
                           variable; anything more specific must win.
``local``           0      the fallback, always detected.
===============  ========  ==================================================================
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import zlib
from collections.abc import Iterator

from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError

TORCH_DEFAULT_PORT = 29500
"""``torch.distributed``'s (and torchrun's) default rendezvous port."""

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


def _int_var(name: str, launcher: str) -> int:
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


def _user_port() -> int | None:
    """``MASTER_PORT`` when the user set it, which overrides a scheduler-derived port."""
    value = os.environ.get("MASTER_PORT", "").strip()
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SelectionError(f"MASTER_PORT={value!r} is not a TCP port number (1..65535)")
    return int(value)


def _optional_int(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


class _SchedulerManaged(ClusterEnvironment):
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


# -- local --------------------------------------------------------------------------------


class LocalEnvironment(ClusterEnvironment):
    """One machine, or nodes started by hand (``switchyard run --node-rank``), where switchyard
    starts the processes itself.

    Reads ``MASTER_ADDR`` (default ``127.0.0.1``), ``MASTER_PORT`` (default: 29500 for several
    nodes, else a free port), ``NODE_RANK`` (or ``GROUP_RANK``; default 0) and, in the processes
    switchyard's launchers started, ``LOCAL_RANK``, ``RANK`` and ``WORLD_SIZE``. Ranks the
    strategy computed (:meth:`set_world_size`, :meth:`set_global_rank`) take precedence over
    ``RANK``/``WORLD_SIZE``, which may be left over from an outer launcher. Always detected:
    the fallback with the lowest priority.
    """

    def __init__(self) -> None:
        self._world_size: int | None = None
        self._global_rank: int | None = None
        self._main_port: int | None = None
        self._num_nodes = 1

    @classmethod
    def detect(cls) -> bool:
        return True

    @property
    def creates_processes_externally(self) -> bool:
        # our own launchers export LOCAL_RANK to the processes they start
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if self._main_port is None:
            env_port = _user_port()
            if env_port is not None:
                self._main_port = env_port
            elif self._num_nodes > 1:
                # every node must agree without talking: a free port of node 0 is unknowable
                self._main_port = TORCH_DEFAULT_PORT
            else:
                self._main_port = find_free_port(self.main_address)
        return self._main_port

    def world_size(self) -> int:
        if self._world_size is not None:
            return self._world_size
        return int(os.environ.get("WORLD_SIZE", 1))

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        if self._global_rank is not None:
            return self._global_rank
        return int(os.environ.get("RANK", 0))

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    def node_rank(self) -> int:
        return int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        self._num_nodes = num_nodes
        node_rank = self.node_rank()
        if node_rank >= num_nodes:
            raise SelectionError(
                f"NODE_RANK={node_rank}, but num_nodes={num_nodes} allows node ranks 0.."
                f"{num_nodes - 1}. Give each node its own NODE_RANK below num_nodes, or pass "
                f"num_nodes={node_rank + 1} or more"
            )
        if node_rank > 0 and "MASTER_ADDR" not in os.environ:
            raise SelectionError(
                f"this is node {node_rank} of {num_nodes}, but MASTER_ADDR is not set, so it "
                "cannot find node 0. Export MASTER_ADDR (node 0's host name or IP address) and "
                "MASTER_PORT on every node, or start the job with a scheduler switchyard "
                "detects (torchrun, srun, mpirun, jsrun)"
            )


# -- torchrun / torchelastic ----------------------------------------------------------------

_TORCHRUN_VARS = frozenset(
    {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK"}
)


class TorchElasticEnvironment(_SchedulerManaged):
    """Processes started by ``torchrun`` (``torch.distributed.run``, torch.distributed.elastic),
    including those switchyard's own script launcher starts through it.

    Detected by ``TORCHELASTIC_RUN_ID`` (what ``torch.distributed.is_torchelastic_launched``
    checks) or by the full set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``, ``GROUP_RANK`` that torchrun-compatible launchers export. Reads
    ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``GROUP_RANK``
    (the node rank), ``LOCAL_WORLD_SIZE`` and ``GROUP_WORLD_SIZE`` (the number of nodes).
    """

    _launcher = "torchrun"

    @classmethod
    def detect(cls) -> bool:
        return "TORCHELASTIC_RUN_ID" in os.environ or _TORCHRUN_VARS.issubset(os.environ)

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR") or "127.0.0.1"

    @property
    def main_port(self) -> int:
        return _int_var("MASTER_PORT", self._launcher)

    def world_size(self) -> int:
        return _int_var("WORLD_SIZE", self._launcher)

    def global_rank(self) -> int:
        return _int_var("RANK", self._launcher)

    def local_rank(self) -> int:
        return _int_var("LOCAL_RANK", self._launcher)

    def node_rank(self) -> int:
        return _int_var("GROUP_RANK", self._launcher)

    def local_world_size(self) -> int | None:
        return _optional_int("LOCAL_WORLD_SIZE")

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        world, expected = self.world_size(), num_devices * num_nodes
        per_node = self.local_world_size()
        nodes = _optional_int("GROUP_WORLD_SIZE")
        known = per_node is not None and nodes is not None
        layout = f"torchrun runs {per_node} per node on {nodes} node(s)" if known else ""
        if world != expected:
            # worded like the strategy's own check, which catches what slips past this one
            what = (
                f"{world} processes were started, but the runtime expects {expected} "
                f"(devices={num_devices} x num_nodes={num_nodes})"
            )
            what += f"; {layout}" if known else ""
        elif (per_node is not None and per_node != num_devices) or (
            nodes is not None and nodes != num_nodes
        ):
            what = (
                f"{layout}, but the runtime asks for devices={num_devices} per node on "
                f"num_nodes={num_nodes}"
            )
        else:
            return
        fix = f"pass devices={per_node}, num_nodes={nodes}, or " if known else ""
        raise SelectionError(
            f"{what}. Either {fix}start torchrun with --nproc-per-node {num_devices} "
            f"--nnodes {num_nodes}"
        )


# -- Slurm ----------------------------------------------------------------------------------

_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_TASKS_ITEM = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")
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


def _expand_range_set(spec: str, hostlist: str) -> list[str]:
    """``"001-003,007"`` -> ``["001", "002", "003", "007"]``; the lower bound's width pads."""
    values: list[str] = []
    for part in spec.split(","):
        low, sep, high = part.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"host list {hostlist!r}: {part!r} is not a number or range")
        if not sep:
            values.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f"host list {hostlist!r}: range {part!r} runs backwards")
        width = len(low)
        values.extend(f"{n:0{width}d}" for n in range(int(low), int(high) + 1))
    return values


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
    for item in items:
        literals = _BRACKET.split(item)  # literal, range, literal, range, ..., literal
        if any(c in "[]" for c in "".join(literals[::2])):
            raise ValueError(f"host list {hostlist!r}: cannot read {item!r}")
        groups = [_expand_range_set(spec, hostlist) for spec in literals[1::2]]
        for choice in itertools.product(*groups):
            parts = [literals[0]]
            for value, literal in zip(choice, literals[2::2], strict=True):
                parts += [value, literal]
            yield "".join(parts)


def expand_hostlist(hostlist: str) -> list[str]:
    """Every host name of a Slurm host list (see :func:`iter_hostlist`)."""
    return list(iter_hostlist(hostlist))


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
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _first_set(*names: str) -> tuple[str, str] | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return name, value
    return None


class SLURMEnvironment(_SchedulerManaged):
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
        ntasks = _optional_int("SLURM_NTASKS")
        if ntasks is None:
            return False
        return "SLURM_STEP_ID" in os.environ or ntasks > 1

    @property
    def creates_processes_externally(self) -> bool:
        return "SLURM_STEP_ID" in os.environ

    @property
    def main_address(self) -> str:
        if os.environ.get("MASTER_ADDR"):
            return os.environ["MASTER_ADDR"]
        found = _first_set("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
        if found is None:
            raise SelectionError(
                "Slurm exported no node list (SLURM_NODELIST), so the main node is unknown; "
                "export MASTER_ADDR with the host name of the node that runs task 0"
            )
        name, value = found
        try:
            return first_host(value)
        except ValueError as error:
            raise SelectionError(
                f"{name}={value!r} cannot be read ({error}); export MASTER_ADDR with the host "
                "name of the node that runs task 0"
            ) from None

    @property
    def main_port(self) -> int:
        port = _user_port()
        if port is not None:
            return port
        job_id = os.environ.get("SLURM_JOB_ID", "").strip()
        return derived_port(job_id) if job_id else TORCH_DEFAULT_PORT

    def world_size(self) -> int:
        if _optional_int("SLURM_STEP_NUM_TASKS") is not None:
            return _int_var("SLURM_STEP_NUM_TASKS", self._launcher)
        return _int_var("SLURM_NTASKS", self._launcher)

    def global_rank(self) -> int:
        return _int_var("SLURM_PROCID", self._launcher)

    def local_rank(self) -> int:
        return _int_var("SLURM_LOCALID", self._launcher)

    def node_rank(self) -> int:
        return _int_var("SLURM_NODEID", self._launcher)

    def local_world_size(self) -> int | None:
        counts = self.tasks_per_node()
        node = _optional_int("SLURM_NODEID")
        if not counts or node is None:
            return None
        return counts[node] if node < len(counts) else None

    def tasks_per_node(self) -> list[int] | None:
        """Tasks on each node of the step, or ``None`` if Slurm did not say."""
        found = _first_set(
            "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"
        )
        if found is None:
            return None
        name, value = found
        try:
            counts = parse_tasks_per_node(value)
        except ValueError:
            raise SelectionError(f"{name}={value!r} cannot be read as tasks per node") from None
        if name == "SLURM_NTASKS_PER_NODE":
            nodes = self.num_nodes()
            counts = counts * (nodes or 1) if len(counts) == 1 else counts
        return counts

    def num_nodes(self) -> int | None:
        """Nodes of the step, or ``None`` if Slurm did not say."""
        for name in ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"):
            value = _optional_int(name)
            if value is not None:
                return value
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


# -- LSF (jsrun) ------------------------------------------------------------------------------


class LSFEnvironment(_SchedulerManaged):
    """Processes started by ``jsrun``, the job step manager of IBM Spectrum LSF on CSM clusters.

    Detected by ``LSB_JOBID`` with ``JSM_NAMESPACE_SIZE``, ``JSM_NAMESPACE_RANK`` and
    ``JSM_NAMESPACE_LOCAL_RANK`` (world size, rank, local rank); ``JSM_NAMESPACE_LOCAL_SIZE``
    is the number of processes on this node. The hosts come from the file named by
    ``LSB_DJOB_RANKFILE`` (one line per slot) or else from ``LSB_HOSTS``; the first entry is the
    launch node, which runs no task, and is skipped. The main address is the first compute host
    (or ``MASTER_ADDR``), the main port :func:`derived_port` of ``LSB_JOBID`` (or
    ``MASTER_PORT``), the node rank the position of this host among the compute hosts.
    """

    _launcher = "jsrun"

    def __init__(self) -> None:
        self._hosts: list[str] | None = None

    @classmethod
    def detect(cls) -> bool:
        required = (
            "LSB_JOBID",
            "JSM_NAMESPACE_SIZE",
            "JSM_NAMESPACE_RANK",
            "JSM_NAMESPACE_LOCAL_RANK",
        )
        return all(name in os.environ for name in required)

    def hosts(self) -> list[str]:
        """The job's compute hosts, each once, in the scheduler's order (launch node dropped)."""
        if self._hosts is None:
            entries: list[str] = []
            rankfile = os.environ.get("LSB_DJOB_RANKFILE", "").strip()
            if rankfile:
                try:
                    with open(rankfile, encoding="utf-8") as handle:
                        entries = [line.strip() for line in handle if line.strip()]
                except OSError as error:
                    raise SelectionError(
                        f"LSB_DJOB_RANKFILE={rankfile!r} cannot be read ({error.strerror}); "
                        "export MASTER_ADDR with the host name of the first compute node"
                    ) from None
            else:
                entries = os.environ.get("LSB_HOSTS", "").split()
            compute = entries[1:] or entries  # the first entry is the launch node
            self._hosts = list(dict.fromkeys(compute))
        return self._hosts

    @property
    def main_address(self) -> str:
        if os.environ.get("MASTER_ADDR"):
            return os.environ["MASTER_ADDR"]
        hosts = self.hosts()
        if not hosts:
            raise SelectionError(
                "LSF exported no host list (LSB_DJOB_RANKFILE or LSB_HOSTS), so the main node "
                "is unknown; export MASTER_ADDR with the host name of the first compute node"
            )
        return hosts[0]

    @property
    def main_port(self) -> int:
        port = _user_port()
        if port is not None:
            return port
        return derived_port(os.environ.get("LSB_JOBID", ""))

    def world_size(self) -> int:
        return _int_var("JSM_NAMESPACE_SIZE", self._launcher)

    def global_rank(self) -> int:
        return _int_var("JSM_NAMESPACE_RANK", self._launcher)

    def local_rank(self) -> int:
        return _int_var("JSM_NAMESPACE_LOCAL_RANK", self._launcher)

    def local_world_size(self) -> int | None:
        return _optional_int("JSM_NAMESPACE_LOCAL_SIZE")

    def node_rank(self) -> int:
        hosts = self.hosts()
        hostname = socket.gethostname()
        short = hostname.split(".")[0]
        for index, host in enumerate(hosts):
            if host == hostname or host.split(".")[0] == short:
                return index
        local_size = self.local_world_size()
        if local_size:
            return self.global_rank() // local_size
        raise SelectionError(
            f"this host ({hostname}) is not among the job's hosts ({', '.join(hosts) or 'none'}) "
            "and JSM_NAMESPACE_LOCAL_SIZE is not set, so its node rank is unknown"
        )

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        world = self.world_size()
        per_node = self.local_world_size()
        if (per_node is not None and per_node != num_devices) or (world != num_devices * num_nodes):
            layout = f" ({per_node} on this node)" if per_node is not None else ""
            raise SelectionError(
                f"jsrun started {world} process(es){layout}, but the runtime asks for "
                f"devices={num_devices} x num_nodes={num_nodes} = {num_devices * num_nodes}. "
                f"Either match devices= and num_nodes= to the jsrun layout, or run jsrun with "
                f"--nrs {num_nodes} --rs_per_host 1 --tasks_per_rs {num_devices}"
            )
        hosts = self.hosts()
        if hosts and num_nodes > len(hosts):
            raise SelectionError(
                f"the LSF job has {len(hosts)} compute host(s), but the runtime asks for "
                f"num_nodes={num_nodes}. Pass num_nodes={len(hosts)} or less, or submit with "
                f"bsub -nnodes {num_nodes}"
            )


# -- MPI ----------------------------------------------------------------------------------------

_OPEN_MPI_VARS = (
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
)
_HYDRA_VARS = ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")


class MPIEnvironment(_SchedulerManaged):
    """Processes started by ``mpirun``/``mpiexec``: Open MPI, or MPICH and Intel MPI (Hydra).

    Needs no MPI library in Python: the launchers export the layout. Open MPI:
    ``OMPI_COMM_WORLD_SIZE``, ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_LOCAL_RANK``,
    ``OMPI_COMM_WORLD_LOCAL_SIZE`` (``OMPI_COMM_WORLD_NODE_RANK`` is *not* a node index, it is
    the process's rank on its node across all jobs, and is not used). Hydra: ``PMI_SIZE``,
    ``PMI_RANK``, ``MPI_LOCALRANKID``, ``MPI_LOCALNRANKS``. The node rank is
    ``rank // local size``, which holds for the usual block placement (``--map-by slot``,
    ``-ppn``); :meth:`validate_settings` rejects round-robin placement.

    MPI exports no rendezvous address: ``MASTER_ADDR`` must be passed to every process for
    several nodes (``mpirun -x MASTER_ADDR=...``, ``mpiexec -genv MASTER_ADDR ...``); on one
    node it defaults to ``127.0.0.1``. The port is ``MASTER_PORT``, else :func:`derived_port`
    of the job's PMIx namespace (``PMIX_NAMESPACE`` or ``OMPI_MCA_ess_base_jobid``, the same in
    every process of one job), else 29500.
    """

    _launcher = "mpirun"

    @classmethod
    def detect(cls) -> bool:
        return all(n in os.environ for n in _OPEN_MPI_VARS) or all(
            n in os.environ for n in _HYDRA_VARS
        )

    @staticmethod
    def _names() -> tuple[str, str, str, str]:
        """(size, rank, local rank, local size) variable names of the MPI that started us."""
        if all(n in os.environ for n in _OPEN_MPI_VARS):
            return _OPEN_MPI_VARS
        return _HYDRA_VARS

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR") or "127.0.0.1"

    @property
    def main_port(self) -> int:
        port = _user_port()
        if port is not None:
            return port
        found = _first_set("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid")
        return derived_port(found[1]) if found else TORCH_DEFAULT_PORT

    def world_size(self) -> int:
        return _int_var(self._names()[0], self._launcher)

    def global_rank(self) -> int:
        return _int_var(self._names()[1], self._launcher)

    def local_rank(self) -> int:
        return _int_var(self._names()[2], self._launcher)

    def local_world_size(self) -> int:
        """Processes of this job on this node."""
        return _int_var(self._names()[3], self._launcher)

    def node_rank(self) -> int:
        return self.global_rank() // max(self.local_world_size(), 1)

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        world, per_node = self.world_size(), self.local_world_size()
        if world != num_devices * num_nodes or per_node != num_devices:
            raise SelectionError(
                f"mpirun started {world} process(es), {per_node} on this node, but the runtime "
                f"asks for devices={num_devices} x num_nodes={num_nodes} = "
                f"{num_devices * num_nodes}. Either match devices= and num_nodes= to mpirun, or "
                f"run mpirun -np {num_devices * num_nodes} --map-by ppr:{num_devices}:node "
                f"(Hydra: mpiexec -n {num_devices * num_nodes} -ppn {num_devices})"
            )
        rank, local_rank = self.global_rank(), self.local_rank()
        if rank % per_node != local_rank:
            raise SelectionError(
                f"mpirun placed ranks round-robin over the nodes (rank {rank} is local rank "
                f"{local_rank} of {per_node}), so node ranks cannot be derived. Place "
                f"consecutive ranks on the same node: mpirun --map-by ppr:{num_devices}:node "
                f"(Hydra: -ppn {num_devices})"
            )
        if num_nodes > 1 and not os.environ.get("MASTER_ADDR"):
            raise SelectionError(
                f"this MPI job spans {num_nodes} nodes, but MASTER_ADDR is not set, so the "
                "processes cannot find rank 0. Pass the first node's host name to every "
                "process: mpirun -x MASTER_ADDR=<host of rank 0> (Hydra: mpiexec -genv "
                "MASTER_ADDR <host>), optionally with MASTER_PORT"
            )


# -- Kubeflow PyTorchJob ----------------------------------------------------------------------

_KUBEFLOW_VARS = ("KUBERNETES_PORT", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
_NOT_KUBEFLOW_VARS = ("LOCAL_RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID")


class KubeflowEnvironment(ClusterEnvironment):
    """A pod of a Kubeflow ``PyTorchJob`` (training-operator) whose command runs Python
    directly; each pod is one node and switchyard starts the processes of its devices.

    The operator sets in every pod ``MASTER_ADDR``/``MASTER_PORT`` (the master pod's service),
    ``RANK`` (the pod's index: master 0, worker *i* is *i + 1*) and ``WORLD_SIZE``; operator
    v1.7 and later add ``PET_NNODES`` (pods), ``PET_NODE_RANK`` (= ``RANK``) and
    ``PET_NPROC_PER_NODE`` (``spec.nprocPerNode``, default ``auto``), and then set
    ``WORLD_SIZE`` to pods x ``nprocPerNode`` when that is a number (older operators, and
    ``auto``: the number of pods). Kubernetes adds ``KUBERNETES_PORT`` to every pod.

    Detected when ``KUBERNETES_PORT``, ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` and
    ``RANK`` are set but none of ``LOCAL_RANK``, ``GROUP_RANK``, ``TORCHELASTIC_RUN_ID``
    (a pod whose command is ``torchrun`` gets the ``torchelastic`` environment in its workers).

    Unlike Lightning's ``KubeflowEnvironment`` (one process per pod, started by the operator,
    and never auto-detected), a pod may hold several devices: ``creates_processes_externally``
    is ``False``, the node rank is the pod's ``RANK`` and the world size is pods x devices,
    set by the strategy. With one device per pod the ranks are exactly Lightning's. In the
    processes switchyard starts, ``RANK`` becomes the process's global rank, so the node rank is
    read from ``NODE_RANK`` (which switchyard's launchers export) or ``PET_NODE_RANK`` first.
    """

    def __init__(self) -> None:
        self._world_size: int | None = None
        self._global_rank: int | None = None

    @classmethod
    def detect(cls) -> bool:
        return all(n in os.environ for n in _KUBEFLOW_VARS) and not any(
            n in os.environ for n in _NOT_KUBEFLOW_VARS
        )

    @property
    def creates_processes_externally(self) -> bool:
        return False

    @property
    def main_address(self) -> str:
        if not os.environ.get("MASTER_ADDR"):
            raise SelectionError(
                "MASTER_ADDR is not set; the PyTorchJob operator sets it to the master pod's "
                "service. Is this a PyTorchJob pod with a Master replica?"
            )
        return os.environ["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        return _int_var("MASTER_PORT", "the PyTorchJob operator")

    @staticmethod
    def processes_per_pod() -> int:
        """``nprocPerNode`` when the job spells it as a number, else 1."""
        return _optional_int("PET_NPROC_PER_NODE") or 1

    def num_pods(self) -> int:
        """Pods of the job (master and workers), each one node."""
        pods = _optional_int("PET_NNODES")
        if pods is not None:
            return pods
        return _int_var("WORLD_SIZE", "the PyTorchJob operator") // self.processes_per_pod()

    def world_size(self) -> int:
        if self._world_size is not None:
            return self._world_size
        return self.num_pods() * self.processes_per_pod()

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        if self._global_rank is not None:
            return self._global_rank
        return self.node_rank() * self.processes_per_pod() + self.local_rank()

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    def node_rank(self) -> int:
        for name in ("NODE_RANK", "PET_NODE_RANK"):
            value = _optional_int(name)
            if value is not None:
                return value
        return _int_var("RANK", "the PyTorchJob operator")

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        nnodes = os.environ.get("PET_NNODES", "").strip()
        if nnodes and not nnodes.isdigit():
            raise SelectionError(
                f"this PyTorchJob is elastic (PET_NNODES={nnodes!r}); its pods must run the "
                "script through torchrun, which reads the PET_* variables: set the container "
                "command to `torchrun train.py` (switchyard then detects 'torchelastic')"
            )
        pods = self.num_pods()
        if pods != num_nodes:
            raise SelectionError(
                f"the PyTorchJob has {pods} pod(s) (master and workers), each one node, but "
                f"the runtime asks for num_nodes={num_nodes}. Either pass num_nodes={pods}, or "
                f"give the job {num_nodes} replicas in all (1 Master + {num_nodes - 1} Worker)"
            )
        nproc = _optional_int("PET_NPROC_PER_NODE")
        if nproc is not None and nproc != num_devices:
            raise SelectionError(
                f"the PyTorchJob sets nprocPerNode: {nproc}, but the runtime asks for "
                f"devices={num_devices} per pod. Either pass devices={nproc}, or set "
                f'nprocPerNode: "{num_devices}" (or "auto") in the job spec'
            )
        node_rank = self.node_rank()
        if node_rank >= pods:
            raise SelectionError(
                f"this pod's RANK={node_rank} is not below the number of pods ({pods}); the "
                "PyTorchJob variables are inconsistent. Do not override RANK or WORLD_SIZE in "
                "the pod spec"
            )
