"""The XLA strategies that own the step: ``single_xla`` and the multi-process ``xla``.

Computation on an XLA device is recorded lazily and compiled into a graph. The strategy ends
each step with ``torch_xla.sync()`` after the optimizer steps, so every step is one graph that
XLA compiles once and reruns, instead of one graph growing until something reads a value.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader

from switchyard import Launcher, Precision, SelectionError, Strategy
from switchyard import checkpoint as checkpoints
from switchyard.accelerator import Accelerator
from switchyard.builtin.precisions import MixedPrecision
from switchyard.environment import ClusterEnvironment
from switchyard.strategy import ReduceOp
from switchyard_xla.accelerator import pjrt_device
from switchyard_xla.dataloading import XLADeviceLoader
from switchyard_xla.precision import XLAMixedPrecision


def to_cpu(data: Any) -> Any:
    """``data`` with every XLA tensor copied to the CPU, after the pending graph ran: what
    ``xm.save`` writes. Other values are left as they are."""
    import torch_xla

    torch_xla.sync(wait=True)

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.device.type == "xla":
            return value.cpu()
        return value

    return tree_map(move, data)


class XLAStepStrategy(Strategy):
    """What the XLA strategies share: XLA's autocast for ``bf16-mixed``, the step ended by
    ``torch_xla.sync()`` after the optimizer step, batches through ``MpDeviceLoader``, and
    checkpoints moved to the CPU first, as ``xm.save`` does, then written atomically by core's
    checkpoint publishing."""

    def connect_precision(self, precision: Precision) -> Precision:
        if isinstance(precision, MixedPrecision) and precision.compute_dtype == torch.bfloat16:
            return XLAMixedPrecision(precision.name)
        return precision

    def backward(
        self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any
    ) -> None:
        try:
            super().backward(tensor, module, *args, **kwargs)
        except RuntimeError as error:
            if "device_ready_queues_" not in str(error):
                raise
            raise RuntimeError(
                "backward on the XLA device failed because torch's autograd engine started "
                "before torch_xla's runtime did: a backward ran in this process (on the CPU, "
                "say) before any XLA tensor existed, and the engine then counted no XLA "
                "device. Create the Runtime (or any XLA tensor) before the first backward of "
                "the process"
            ) from error

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        import torch_xla

        result = self.precision.optimizer_step(optimizer, **kwargs)
        torch_xla.sync()
        return result

    def process_dataloader(self, dataloader: DataLoader[Any]) -> DataLoader[Any]:
        return cast("DataLoader[Any]", XLADeviceLoader(dataloader, self.root_device))

    def save_checkpoint(
        self,
        path: str | Path,
        state: Mapping[str, Any],
        filter: Mapping[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Write ``state`` to ``path`` atomically from global rank zero. As ``xm.save`` does,
        every tensor is moved to the CPU first (after the pending graph ran), so that the file
        loads anywhere, without torch_xla."""
        savable = to_cpu(self._to_savable(state, filter))
        failure: Exception | None = None
        if self.is_global_zero:
            try:
                checkpoints.atomic_save(savable, path)
            except Exception as error:
                failure = error
        self._agree_on_save(path, failure)

    def teardown(self) -> None:
        import torch_xla

        # the last step's graph runs before the process lets go of the device
        torch_xla.sync(wait=True)
        super().teardown()


class SingleXLAStrategy(XLAStepStrategy):
    """One process on one XLA device."""

    @property
    def root_device(self) -> torch.device:
        return self.devices[0]


class _LaunchedFunction:
    """What every process of :class:`XLALauncher` runs: the runtime's function, whose rank-zero
    result goes back to the launching process through ``results``."""

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        results: Any,
    ) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.results = results

    def __call__(self, index: int) -> None:
        import torch_xla.runtime as xr

        result = self.function(*self.args, **self.kwargs)
        if xr.global_ordinal() == 0:
            self.results.append(result)


class XLALauncher(Launcher):
    """Starts one process per XLA device with ``torch_xla.launch`` (``xmp.spawn``), or runs the
    function in this process for a job of one. torch_xla starts a process on every device of
    the host or on one; it must be called before this process starts the PJRT runtime."""

    requires_function = True

    def __init__(self, num_processes: int) -> None:
        self.num_processes = num_processes

    def launch(self, function: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> Any:
        import torch_xla

        if function is None:
            raise RuntimeError("the xla strategy needs runtime.launch(function)")
        if self.num_processes == 1:
            results: list[Any] = []
            torch_xla.launch(
                _LaunchedFunction(function, args, kwargs, results), debug_single_process=True
            )
            return results[0] if results else None
        import torch.multiprocessing as mp

        # a manager's list travels to processes that torch_xla starts with spawn
        with mp.get_context("spawn").Manager() as manager:
            shared = manager.list()
            torch_xla.launch(_LaunchedFunction(function, args, kwargs, shared))
            return shared[0] if len(shared) else None


_XLA_REDUCE = {"sum": "sum", "mean": "sum", "max": "max", "min": "min", "product": "mul"}


class XLAStrategy(XLAStepStrategy):
    """One process per XLA device, started by ``torch_xla.launch``; ``runtime.launch(fn)``.

    Gradients are averaged over the processes at the end of ``runtime.backward`` (as DDP does,
    so ``runtime.no_backward_sync`` accumulates without it) with ``xm.all_reduce``; the
    collectives are XLA's (``xm.all_reduce``, ``xm.all_gather``, ``xm.rendezvous``).

    On XLA's CPU device the devices are threads of one process and torch_xla's collectives do
    not work there (pytorch/xla#9089), so more than one device is refused there.
    """

    def __init__(self) -> None:
        self._launched_world: int | None = None

    def bind(
        self,
        *,
        accelerator: Accelerator,
        precision: Precision,
        environment: ClusterEnvironment,
        devices: Sequence[torch.device],
        num_nodes: int,
    ) -> None:
        super().bind(
            accelerator=accelerator,
            precision=precision,
            environment=environment,
            devices=devices,
            num_nodes=num_nodes,
        )
        count = len(self.devices)
        if num_nodes != 1:
            raise SelectionError(
                f"strategy 'xla' runs on one host here (num_nodes={num_nodes} was asked); on a "
                "TPU pod slice start the script on every host and pass num_nodes=1"
            )
        if count > 1 and pjrt_device() == "CPU":
            raise SelectionError(
                f"strategy 'xla' with devices={count} on XLA's CPU device: torch_xla runs CPU "
                "devices as threads of one process, where its collectives do not work "
                "(pytorch/xla#9089). Use strategy='xla_spmd' to drive several CPU devices from "
                "one process, or devices=1"
            )
        available = type(accelerator).device_count()
        if count not in (1, available):
            raise SelectionError(
                f"strategy 'xla' with devices={count}: torch_xla.launch starts a process on "
                f"every one of the {available} visible XLA devices, or on one; pass "
                f"devices={available} (or -1) or devices=1, or limit the visible devices (for "
                "TPUs, TPU_VISIBLE_CHIPS and TPU_PROCESS_BOUNDS)"
            )

    @property
    def launcher(self) -> Launcher:
        return XLALauncher(len(self.devices))

    def _runtime(self) -> Any:
        import torch_xla.runtime as xr

        return xr

    @property
    def world_size(self) -> int:
        if self._launched_world is not None:
            return self._launched_world
        return len(self.devices) * self.num_nodes

    @property
    def global_rank(self) -> int:
        return int(self._runtime().global_ordinal()) if self._launched_world else 0

    @property
    def local_rank(self) -> int:
        return int(self._runtime().local_ordinal()) if self._launched_world else 0

    @property
    def root_device(self) -> torch.device:
        if self._launched_world is None:
            return self.devices[0]
        import torch_xla

        return torch_xla.device()

    def setup_environment(self) -> None:
        self._launched_world = int(self._runtime().world_size())
        super().setup_environment()

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # -- the training step ----------------------------------------------------------------

    _sync_gradients = True

    def backward(
        self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any
    ) -> None:
        super().backward(tensor, module, *args, **kwargs)
        if self._sync_gradients and module is not None and self.world_size > 1:
            import torch_xla.core.xla_model as xm

            gradients = [p.grad for p in module.parameters() if p.grad is not None]
            if gradients:
                xm.all_reduce(xm.REDUCE_SUM, gradients, scale=1.0 / self.world_size)

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> Any:
        import contextlib

        @contextlib.contextmanager
        def skipping() -> Any:
            previous, self._sync_gradients = self._sync_gradients, not enabled
            try:
                yield
            finally:
                self._sync_gradients = previous

        return skipping()

    # -- collectives ----------------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "mean") -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        import torch_xla.core.xla_model as xm

        reduced = xm.all_reduce(_XLA_REDUCE[op], tensor.to(self.root_device))
        if op == "mean":
            reduced = reduced / self.world_size
        return reduced.to(tensor.device)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor.unsqueeze(0)
        import torch_xla.core.xla_model as xm

        gathered = xm.all_gather(tensor.to(self.root_device).unsqueeze(0), dim=0)
        return gathered.to(tensor.device)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if self.world_size == 1:
            return obj
        import torch_xla.core.xla_model as xm

        payload = pickle.dumps(obj) if self.global_rank == src else b""
        # the payloads come from this job's own processes, which run the user's script
        return pickle.loads(xm.rendezvous("switchyard.broadcast", payload)[src])

    def barrier(self, name: str | None = None) -> None:
        if self.world_size == 1:
            return
        import torch_xla.core.xla_model as xm

        xm.rendezvous(name or "switchyard.barrier")
