"""The ``example_allreduce`` strategy: data parallel written out by hand, without
``DistributedDataParallel``.

Every process holds the whole model. At setup, rank 0's parameters and buffers are broadcast so
that all replicas start equal; after each backward the gradients are averaged over processes,
a few large ``all_reduce`` calls instead of one per parameter. ``ParallelStrategy`` (in core)
already provides the launcher, the process group, the ranks, the collectives and the
distributed sampler; a strategy only adds what it does differently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from switchyard.parallel import ParallelStrategy, StartMethod


class AllReduceStrategy(ParallelStrategy):
    """Replicate the model; average gradients with ``all_reduce`` after every backward.

    Args:
        start_method: ``"popen"`` (torchrun) or ``"spawn"``/``"fork"``, as for DDP.
        process_group_backend: default: the accelerator's.
        timeout: how long collectives wait for a missing peer (default: 10 minutes, or
            ``Runtime(timeout=...)``; see :class:`~switchyard.parallel.ParallelStrategy`).
        bucket_mb: gradients are averaged in flat buckets of about this size.
    """

    def __init__(
        self,
        start_method: StartMethod = "popen",
        process_group_backend: str | None = None,
        timeout: timedelta | float | None = None,
        bucket_mb: float = 25.0,
    ) -> None:
        super().__init__(start_method, process_group_backend, timeout)
        self.bucket_bytes = int(bucket_mb * 1024 * 1024)
        self._unsynced: set[int] = set()

    def setup_module(self, module: nn.Module) -> nn.Module:
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor, src=0)
        return module

    def backward(
        self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any
    ) -> None:
        super().backward(tensor, module, *args, **kwargs)
        if module is None:
            raise ValueError(
                "example_allreduce averages the gradients of the module the loss belongs to; "
                "with several set-up modules, call runtime.backward(loss, model=model)"
            )
        if id(module) not in self._unsynced:
            self.average_gradients(module)

    @contextlib.contextmanager
    def _skip_sync(self, module: nn.Module) -> Iterator[None]:
        self._unsynced.add(id(module))
        try:
            yield
        finally:
            self._unsynced.discard(id(module))

    def no_backward_sync(
        self, module: nn.Module, enabled: bool
    ) -> contextlib.AbstractContextManager[Any]:
        # gradients accumulate locally; the next synchronised backward averages the sum
        return self._skip_sync(module) if enabled else contextlib.nullcontext()

    def average_gradients(self, module: nn.Module) -> None:
        """Replace every gradient of ``module`` by its mean over all processes."""
        for bucket in self._buckets([p.grad for p in module.parameters() if p.grad is not None]):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world_size
            for grad, averaged in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                grad.copy_(averaged.view_as(grad))

    def _buckets(self, grads: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
        by_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for grad in grads:
            if grad.is_sparse:
                raise NotImplementedError("example_allreduce does not average sparse gradients")
            by_kind.setdefault((grad.dtype, grad.device), []).append(grad)
        for group in by_kind.values():
            bucket: list[torch.Tensor] = []
            size = 0
            for grad in group:
                bucket.append(grad)
                size += grad.numel() * grad.element_size()
                if size >= self.bucket_bytes:
                    yield bucket
                    bucket, size = [], 0
            if bucket:
                yield bucket

    def __repr__(self) -> str:
        return f"AllReduceStrategy(start_method={self.start_method!r})"
