"""A base class for strategies that run one process per device over ``torch.distributed``.

It owns what every such strategy shares: choosing the launcher, creating and destroying the
process group with the accelerator's backend, ranks from the cluster environment, the
collectives and the distributed sampler. The DDP and FSDP plugins subclass it; a third-party
strategy built on ``torch.distributed`` can too.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from switchyard.accelerator import Accelerator, parse_backend
from switchyard.builtin.environments.common import user_port
from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError, SwitchyardError
from switchyard.launcher import Launcher
from switchyard.precision import Precision
from switchyard.strategy import ReduceOp, Strategy
from switchyard.timeouts import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from switchyard.timeouts import MAX_TIMEOUT as MAX_TIMEOUT
from switchyard.timeouts import TIMEOUT_VARIABLE as TIMEOUT_VARIABLE
from switchyard.timeouts import parse_timeout as parse_timeout

T = TypeVar("T")

StartMethod = Literal["popen", "spawn", "fork", "forkserver"]

_PROCESS_GROUPS_MADE = itertools.count()
"""How many process groups this process made so far, numbering their keys in a shared store."""

_CENSUS = "switchyard/census/"
"""Store keys under which the ranks of a failed collective say that they were waiting in it."""


class ParallelStrategy(Strategy):
    """One process per device, talking through a ``torch.distributed`` process group.

    Args:
        start_method: ``"popen"`` re-runs the script once per process through
            ``torch.distributed.run`` (torchrun's own launcher); ``"spawn"``, ``"fork"`` and
            ``"forkserver"`` start processes with ``torch.multiprocessing`` and need
            ``runtime.launch(function)``.
        process_group_backend: ``"gloo"``, ``"nccl"``...; default: the accelerator's.
        timeout: how long every collective, the creation of the process group and torchrun's
            rendezvous wait for a missing peer before the job fails (seconds or a
            ``timedelta``); default :data:`DEFAULT_TIMEOUT` (10 minutes), or
            ``Runtime(timeout=...)``. When one times out, the waiting ranks find out which ranks
            never reached it and name them.
    """

    def __init__(
        self,
        start_method: StartMethod = "popen",
        process_group_backend: str | None = None,
        timeout: timedelta | float | None = None,
    ) -> None:
        if start_method not in ("popen", "spawn", "fork", "forkserver"):
            raise SelectionError(
                f"start_method={start_method!r} is not one of 'popen', 'spawn', 'fork', "
                "'forkserver'"
            )
        self.start_method: StartMethod = start_method
        self._backend = process_group_backend
        self._timeout_given = timeout is not None
        self.timeout = DEFAULT_TIMEOUT if timeout is None else parse_timeout(timeout)
        self._launcher: Launcher | None = None
        self._store: Any = None  # the rendezvous store, for finding out who is missing

    # -- processes ------------------------------------------------------------------------

    def bind(
        self,
        *,
        accelerator: Accelerator,
        precision: Precision,
        environment: ClusterEnvironment,
        devices: Sequence[torch.device],
        num_nodes: int,
    ) -> None:
        """Refuse, before any process starts, an accelerator whose processes cannot talk: no
        backend declared, or one ``torch.distributed`` does not know."""
        super().bind(
            accelerator=accelerator,
            precision=precision,
            environment=environment,
            devices=devices,
            num_nodes=num_nodes,
        )
        check_backend(self.process_group_backend, type(self).__name__, type(accelerator))

    @property
    def process_group_backend(self) -> str:
        """The backend string given to ``init_process_group``: ``process_group_backend=``, else
        the accelerator's (:meth:`~switchyard.Accelerator.process_group_backend`)."""
        backend = self._backend or type(self.accelerator).process_group_backend()
        if backend is None:
            accelerator = type(self.accelerator)
            raise SelectionError(
                f"{type(self).__name__} runs processes that talk through torch.distributed, "
                f"but {accelerator.__name__} declares no process group backend for "
                f"{accelerator.device_type!r} tensors; run one process (devices=1 with the "
                "single_device strategy), or pass process_group_backend=... if a backend you "
                "registered with torch.distributed.Backend.register_backend takes them"
            )
        return backend

    @property
    def num_processes(self) -> int:
        """Processes on this node."""
        return len(self.devices)

    @property
    def launcher(self) -> Launcher | None:
        if self.num_processes * self.num_nodes == 1:
            return None  # a job of one process runs right here, with a process group of one
        if self._launcher is None:
            from switchyard.launchers import MultiprocessingLauncher, TorchrunLauncher

            if self.start_method == "popen":
                self._launcher = TorchrunLauncher(
                    self.environment, self.num_processes, self.num_nodes, timeout=self.timeout
                )
            else:
                if self.start_method == "fork":
                    check_fork_safe(type(self.accelerator), type(self).__name__)
                environment = self.environment
                # on one node the launcher binds the rendezvous itself: a port the user chose,
                # else one the OS picks as it binds
                port = environment.main_port if self.num_nodes > 1 else user_port()
                self._launcher = MultiprocessingLauncher(
                    self.start_method,
                    num_processes=self.num_processes,
                    num_nodes=self.num_nodes,
                    node_rank=environment.node_rank(),
                    main_address=environment.main_address,
                    main_port=port,
                    timeout=self.timeout,
                )
        return self._launcher

    @property
    def world_size(self) -> int:
        return self.environment.world_size()

    @property
    def global_rank(self) -> int:
        return self.environment.global_rank()

    @property
    def local_rank(self) -> int:
        return self.environment.local_rank()

    @property
    def node_rank(self) -> int:
        return self.environment.node_rank()

    @property
    def root_device(self) -> torch.device:
        local_rank = self.local_rank
        if local_rank >= len(self.devices):
            raise SelectionError(
                f"this process has local rank {local_rank}, but the runtime was given "
                f"{len(self.devices)} device(s) per node; the launcher started more processes "
                "per node than devices=... allows"
            )
        return self.devices[local_rank]

    def setup_environment(self) -> None:
        expected = self.num_processes * self.num_nodes
        self.environment.set_world_size(expected)
        self.environment.set_global_rank(self.node_rank * self.num_processes + self.local_rank)
        if self.world_size != expected:
            raise SelectionError(
                f"{self.world_size} processes were started, but the runtime expects {expected} "
                f"({self.num_processes} device(s) per node x {self.num_nodes} node(s)). Make "
                "devices= and num_nodes= match the launcher (torchrun --nproc-per-node, "
                "--nnodes; srun --ntasks-per-node)"
            )
        check_ranks(self.environment, self.global_rank, self.world_size, self.num_nodes)
        os.environ.setdefault("LOCAL_WORLD_SIZE", str(self.num_processes))
        super().setup_environment()
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed support")
        if not dist.is_initialized():
            self._init_process_group()

    def set_runtime_timeout(self, timeout: timedelta, source: str) -> None:
        """Apply ``Runtime(timeout=...)`` (``source="timeout"``) or ``SWITCHYARD_TIMEOUT``
        (``source`` is the variable's name) to this strategy. A timeout given to the strategy
        itself wins over the variable and conflicts with the argument."""
        if self._timeout_given:
            if source == TIMEOUT_VARIABLE:
                return  # chosen in code: wins over the variable, as every choice does
            if timeout != self.timeout:
                raise SelectionError(
                    f"the timeout was given twice: Runtime(timeout={_seconds(timeout)}) and "
                    f"{type(self).__name__}(timeout={_seconds(self.timeout)}); pass one"
                )
        self.timeout = timeout
        if self._launcher is not None and hasattr(self._launcher, "timeout"):
            self._launcher.timeout = timeout

    def _init_process_group(self) -> None:
        """``init_process_group`` through the rendezvous ``env://`` gives (the store torchrun's
        agent or rank 0 holds), keeping the store: when a collective times out, the ranks that
        waited use it to find out which never came. A rendezvous or process group that does not
        form within the timeout fails with the ranks that did not join."""
        address, port = self.environment.main_address, self.environment.main_port
        os.environ["MASTER_ADDR"] = address
        os.environ["MASTER_PORT"] = str(port)
        backend = self.process_group_backend
        kwargs: dict[str, Any] = {}
        if self.root_device.index is not None:
            # an indexed device (not the host): lets backends such as NCCL bind their
            # communicators to this process's device eagerly
            kwargs["device_id"] = self.root_device
        from torch.distributed.distributed_c10d import PrefixStore

        from switchyard.launchers.multiprocessing import HOSTED_STORE_VARIABLE

        rank, world_size = self.global_rank, self.world_size
        store = self._rendezvous_store(address, port, rank, world_size)
        store.set_timeout(self.timeout)
        # a store a launcher holds outlives the process group: a second Runtime in the same
        # processes would otherwise find the addresses the first group's ranks published, and
        # a rank reading one before its peer overwrote it connects to a closed port. Every
        # process makes its groups in the same order, so the n-th group's keys agree.
        generation = next(_PROCESS_GROUPS_MADE)
        if _agent_store():
            # torchrun's agent keeps one store for every attempt of a job: a restarted attempt
            # (--max-restarts) would read the addresses its failed predecessors published and
            # connect to dead processes until the timeout. Each attempt gets its own keys.
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            store = PrefixStore(f"switchyard/attempt_{attempt}/group_{generation}", store)
        elif os.environ.get(HOSTED_STORE_VARIABLE) == "1":
            store = PrefixStore(f"switchyard/group_{generation}", store)
        self._store = store
        try:
            # what init_process_group does with the store of its own rendezvous
            dist.init_process_group(
                backend,
                store=PrefixStore("default_pg", store),
                rank=rank,
                world_size=world_size,
                timeout=self.timeout,
                **kwargs,
            )
        except Exception as error:
            if not is_timeout(error):
                raise
            missing = self._census("the creation of the process group", error)
            raise SwitchyardError(
                f"rank {rank}: the process group was not formed within the timeout of "
                f"{_seconds(self.timeout)} s: {_missing_text(missing, world_size, joining=True)}"
            ) from error

    def _rendezvous_store(self, address: str, port: int, rank: int, world_size: int) -> Any:
        """The store of the rendezvous, created as ``init_process_group("env://")`` would,
        except that a job of one process binds a port the OS picks (nothing else connects to
        it, and a port chosen earlier may have been taken since), and that the processes of a
        launcher holding the store (torchrun's agent, :class:`MultiprocessingLauncher`) all
        connect to it."""
        from torch._C._distributed_c10d import TCPStore

        from switchyard.launchers.multiprocessing import HOSTED_STORE_VARIABLE

        launcher_store = os.environ.get(HOSTED_STORE_VARIABLE) == "1"
        hosted = _agent_store() or launcher_store
        try:
            if hosted:
                return TCPStore(address, port, world_size, False, self.timeout)
            if world_size == 1:
                store = TCPStore(address, 0, 1, True, self.timeout, multi_tenant=True)
                os.environ["MASTER_PORT"] = str(store.port)
                return store
            return TCPStore(address, port, world_size, rank == 0, self.timeout, multi_tenant=True)
        except Exception as error:
            text = f"{type(error).__name__}: {error}"
            if "EADDRINUSE" in text:
                raise SwitchyardError(
                    f"rank {rank} could not open the rendezvous on {address}:{port}: another "
                    f"program holds that port ({text}). Set another MASTER_PORT (switchyard run "
                    "--main-port), or unset it on a single node so a free one is chosen"
                ) from error
            host = (
                "torchrun's agent"
                if _agent_store()
                else "the launcher"
                if launcher_store
                else "rank 0"
            )
            raise SwitchyardError(
                f"rank {rank} could not reach the rendezvous at {address}:{port} within "
                f"{_seconds(self.timeout)} s ({text}). {host.capitalize()} holds it: is it "
                "running, and is that address reachable from here? A slow start of the other "
                "ranks needs a longer Runtime(timeout=...)"
            ) from error

    def explain_failure(self, error: BaseException, what: str = "a collective") -> str | None:
        """When ``error`` is a collective that timed out (anywhere: the runtime's collectives,
        DDP's or FSDP's own, the user's ``torch.distributed`` calls), find out which ranks never
        reached it, through the rendezvous store, and say so (also to the supervisor, which then
        names them); ``None`` for other errors. Costs nothing until a collective fails: each
        waiting rank writes one key and waits a few seconds (:func:`census_grace`) for the
        others."""
        if self.world_size <= 1 or not is_timeout(error) or not dist.is_initialized():
            return None
        missing = self._census(what, error)
        return (
            f"rank {self.global_rank} waited {_seconds(self.timeout)} s (the timeout) in {what} "
            f"that did not complete: {_missing_text(missing, self.world_size)}"
        )

    def _census(self, what: str, error: BaseException) -> list[int] | None:
        """The ranks that did not report, within :func:`census_grace`, that they too were
        waiting; ``None`` when the store cannot be reached. Recorded for the supervisor."""
        store = self._store
        if store is None and dist.is_initialized():
            store = dist.distributed_c10d._get_default_store()
        if store is None:
            return None
        missing = census(store, self.global_rank, self.world_size, census_grace(self.timeout))
        if missing is not None:
            _record(
                {
                    "rank": self.global_rank,
                    "missing": missing,
                    "what": what,
                    "timeout": _seconds(self.timeout),
                    "error": f"{type(error).__name__}: {error}"[:500],
                }
            )
        return missing

    def teardown(self) -> None:
        # torch warns, and gloo can abort the process at exit, without this
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        super().teardown()

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # -- collectives ----------------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "mean") -> torch.Tensor:
        # op is one of REDUCE_OPS (the runtime normalizes it); torch names them in upper case,
        # and the mean is a sum divided afterwards, since gloo has no AVG
        reduce_op = dist.ReduceOp.SUM if op == "mean" else getattr(dist.ReduceOp, op.upper())
        result = tensor.detach().clone()
        if op == "mean" and not torch.is_floating_point(result):
            result = result.to(torch.get_default_dtype())
        dist.all_reduce(result, op=reduce_op)
        if op == "mean":
            result /= self.world_size
        return result

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().contiguous()
        gathered = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(gathered, tensor)
        return torch.stack(gathered)

    def broadcast(self, obj: T, src: int = 0) -> T:
        if not 0 <= src < self.world_size:
            raise ValueError(
                f"broadcast src={src} is not a rank of this job (0..{self.world_size - 1})"
            )
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self, name: str | None = None) -> None:
        if dist.is_initialized():
            dist.barrier()


def census_grace(timeout: timedelta) -> float:
    """How long a rank whose collective timed out waits for the other waiting ranks to say so
    before naming those that did not: a twentieth of the timeout, from 2 to 30 s. A rank that
    reached the collective more than that after the others is named too (it is that far
    behind)."""
    return min(max(timeout.total_seconds() / 20, 2.0), 30.0)


def census(store: Any, rank: int, world_size: int, grace: float) -> list[int] | None:
    """Say in ``store`` that ``rank`` is waiting, wait up to ``grace`` seconds until all
    ``world_size`` ranks did, and return those that did not (sorted); ``None`` when the store
    cannot be used (its host is gone)."""
    try:
        store.set_timeout(timedelta(seconds=max(grace, 1.0)))
        store.set(f"{_CENSUS}{rank}", "waiting")
        arrived = int(store.add(f"{_CENSUS}count", 1))
        deadline = time.monotonic() + grace
        while arrived < world_size and time.monotonic() < deadline:
            time.sleep(0.05)
            arrived = int(store.add(f"{_CENSUS}count", 0))
        return [r for r in range(world_size) if not store.check([f"{_CENSUS}{r}"])]
    except Exception:
        return None


_DISTRIBUTED_WORDS = ("gloo", "nccl", "c10d", "store", "watchdog", "process group")
"""Words of the errors ``torch.distributed``'s backends raise as plain ``RuntimeError``s."""


def is_timeout(error: BaseException) -> bool:
    """Whether ``error``, or an exception it was raised from, is a ``torch.distributed``
    operation that timed out (gloo: "[.../gloo/...] Timed out waiting 5000ms for recv"; the
    store: ``DistStoreError`` "wait timeout"; NCCL's watchdog: "collective operation
    timeout"), not any error that mentions a timeout."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        distributed = isinstance(current, dist.DistError) or (
            isinstance(current, RuntimeError) and any(w in text for w in _DISTRIBUTED_WORDS)
        )
        if distributed and ("timed out" in text or "timeout" in text):
            return True
        current = current.__cause__ or current.__context__
    return False


def check_ranks(
    environment: ClusterEnvironment, rank: int, world_size: int, num_nodes: int
) -> None:
    """Refuse, before any store or process group exists, ranks no job can have: they would
    wait in the rendezvous until the timeout. The built-in environments check their own
    variables earlier (in selection); this catches every other environment."""
    name = type(environment).__name__
    problems = []
    if world_size < 1:
        problems.append(f"a world size of {world_size}")
    elif not 0 <= rank < world_size:
        problems.append(f"global rank {rank} (the ranks are 0..{world_size - 1})")
    local_rank, node_rank = environment.local_rank(), environment.node_rank()
    if local_rank < 0:
        problems.append(f"local rank {local_rank}")
    if not 0 <= node_rank < num_nodes:
        problems.append(f"node rank {node_rank} (num_nodes={num_nodes})")
    if problems:
        raise SelectionError(
            f"{name} reports {', '.join(problems)} for this process, which no job of "
            f"{world_size} process(es) has; its variables are inconsistent. Fix them (see "
            "'switchyard env'), or start the job through its launcher unchanged"
        )


def _agent_store() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() in ("1", "true")


def _seconds(timeout: timedelta) -> float | int:
    seconds = timeout.total_seconds()
    return int(seconds) if seconds == int(seconds) else round(seconds, 3)


def _missing_text(missing: list[int] | None, world_size: int, joining: bool = False) -> str:
    if missing is None:
        return (
            "the rendezvous store is unreachable too, so which ranks are missing is unknown "
            "(the process holding it, torchrun's agent or rank 0, is gone); see the other "
            "ranks' output"
        )
    if not missing and joining:
        return (
            f"all {world_size} ranks joined, but could not connect to each other (the error "
            "above says how): check that the address each host publishes is reachable from the "
            "others (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME) and that no firewall is in the way"
        )
    if not missing:
        return (
            f"all {world_size} ranks were waiting, so none stalled: they called different "
            "collectives, or the same ones in a different order (a rank skipped one)"
        )
    ranks = ", ".join(map(str, missing))
    it = "joined" if joining else "reached it"
    which = f"rank {ranks} never {it}" if len(missing) == 1 else f"ranks {ranks} never {it}"
    return (
        f"{which}: stalled, stuck outside the collectives, or that much slower than the others. "
        "Look at what that rank was doing; if it is legitimately slow (a large save, a download), "
        "raise Runtime(timeout=...) or switchyard run --timeout"
    )


def _record(diagnosis: dict[str, Any]) -> None:
    """Leave the diagnosis for switchyard's supervisor, when it started this process."""
    from switchyard.launchers.worker import record_diagnosis

    record_diagnosis(json.dumps(diagnosis))


def check_backend(backend: str, strategy: str, accelerator: type[Accelerator]) -> None:
    """Raise :class:`~switchyard.SelectionError` unless every backend named in ``backend``
    (``"gloo"`` or ``"cpu:gloo,cuda:nccl"``) is one ``torch.distributed`` knows, built in or
    registered by a plugin with ``torch.distributed.Backend.register_backend``."""
    if not dist.is_available():
        raise SelectionError(
            f"{strategy} needs torch.distributed, which this torch build does not include"
        )
    known = set(dist.Backend.backend_list) - {"undefined"}
    unknown = sorted({name for name in parse_backend(backend).values() if name not in known})
    if unknown:
        raise SelectionError(
            f"{strategy} would create a process group with backend {backend!r} (from "
            f"{accelerator.__name__}), but torch.distributed knows no backend "
            f"{', '.join(repr(u) for u in unknown)}. Known: {', '.join(sorted(known))}. A plugin "
            "that brings its own backend registers it with "
            "torch.distributed.Backend.register_backend(name, creator, devices=[...]) when "
            "its accelerator module is imported"
        )


def check_fork_safe(accelerator: type[Accelerator], strategy: str) -> None:
    """Refuse to fork processes from one that already initialised a device whose runtime does
    not survive ``fork`` (the accelerator's ``forks_after_init`` is ``False`` and its
    ``is_initialized()`` is ``True``): every child would fail on its first device call."""
    if accelerator.forks_after_init or not accelerator.is_initialized():
        return
    raise SelectionError(
        f"{strategy} would start its processes with fork, but this process has already "
        f"initialised its {accelerator.device_type!r} device, which forked processes cannot "
        "use. Start them another way (a strategy with start_method 'spawn' or 'popen', such "
        "as ddp_spawn or ddp), or create no tensor on the device before runtime.launch()"
    )
