"""A base class for strategies that run one process per device over ``torch.distributed``.

It owns what every such strategy shares: choosing the launcher, creating and destroying the
process group with the accelerator's backend, ranks from the cluster environment, the
collectives and the distributed sampler. The DDP and FSDP plugins subclass it; a third-party
strategy built on ``torch.distributed`` can too.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from switchyard.errors import SelectionError
from switchyard.launcher import Launcher
from switchyard.strategy import ReduceOp, Strategy

T = TypeVar("T")

StartMethod = Literal["popen", "spawn", "fork", "forkserver"]

_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "mean": dist.ReduceOp.SUM,  # divided afterwards: gloo has no AVG
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "product": dist.ReduceOp.PRODUCT,
}


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

    @property
    def process_group_backend(self) -> str:
        backend = self._backend or type(self.accelerator).distributed_backend
        if backend is None:
            raise SelectionError(
                f"{type(self.accelerator).__name__} declares no torch.distributed backend, so "
                f"{type(self).__name__} cannot run on it; pass process_group_backend=... or "
                "choose another strategy"
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
                self._launcher = MultiprocessingLauncher(self, self.start_method)
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
            if backend != "gloo":
                # lets backends like NCCL bind communicators to this process's device eagerly
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
        op = op.lower()
        try:
            reduce_op = _REDUCE_OPS[op]
        except KeyError:
            raise ValueError(
                f"all_reduce op={op!r} is not one of {', '.join(_REDUCE_OPS)}"
            ) from None
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
