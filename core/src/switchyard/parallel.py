"""A base class for strategies that run one process per device over ``torch.distributed``.

It owns what every such strategy shares: choosing the launcher, creating and destroying the
process group with the accelerator's backend, ranks from the cluster environment, the
collectives and the distributed sampler. The DDP and FSDP plugins subclass it; a third-party
strategy built on ``torch.distributed`` can too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from switchyard.accelerator import Accelerator, parse_backend
from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError
from switchyard.launcher import Launcher
from switchyard.precision import Precision
from switchyard.strategy import ReduceOp, Strategy

T = TypeVar("T")

StartMethod = Literal["popen", "spawn", "fork", "forkserver"]


class ParallelStrategy(Strategy):
    """One process per device, talking through a ``torch.distributed`` process group.

    Args:
        start_method: ``"popen"`` re-runs the script once per process through
            ``torch.distributed.run`` (torchrun's own launcher); ``"spawn"``, ``"fork"`` and
            ``"forkserver"`` start processes with ``torch.multiprocessing`` and need
            ``runtime.launch(function)``.
        process_group_backend: ``"gloo"``, ``"nccl"``...; default: the accelerator's.
        timeout: how long collectives wait for a missing peer before failing.
    """

    def __init__(
        self,
        start_method: StartMethod = "popen",
        process_group_backend: str | None = None,
        timeout: timedelta | float = timedelta(minutes=30),
    ) -> None:
        if start_method not in ("popen", "spawn", "fork", "forkserver"):
            raise SelectionError(
                f"start_method={start_method!r} is not one of 'popen', 'spawn', 'fork', "
                "'forkserver'"
            )
        self.start_method: StartMethod = start_method
        self._backend = process_group_backend
        self.timeout = timeout if isinstance(timeout, timedelta) else timedelta(seconds=timeout)
        self._launcher: Launcher | None = None

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
                    self.environment, self.num_processes, self.num_nodes
                )
            else:
                if self.start_method == "fork":
                    check_fork_safe(type(self.accelerator), type(self).__name__)
                environment = self.environment
                self._launcher = MultiprocessingLauncher(
                    self.start_method,
                    num_processes=self.num_processes,
                    num_nodes=self.num_nodes,
                    node_rank=environment.node_rank(),
                    main_address=environment.main_address,
                    main_port=environment.main_port,
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
        os.environ.setdefault("LOCAL_WORLD_SIZE", str(self.num_processes))
        super().setup_environment()
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed support")
        if not dist.is_initialized():
            os.environ["MASTER_ADDR"] = self.environment.main_address
            os.environ["MASTER_PORT"] = str(self.environment.main_port)
            backend = self.process_group_backend
            kwargs: dict[str, Any] = {}
            if self.root_device.index is not None:
                # an indexed device (not the host): lets backends such as NCCL bind their
                # communicators to this process's device eagerly
                kwargs["device_id"] = self.root_device
            dist.init_process_group(
                backend,
                rank=self.global_rank,
                world_size=self.world_size,
                timeout=self.timeout,
                **kwargs,
            )

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
