"""The DDP strategy."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from switchyard.parallel import ParallelStrategy, StartMethod


class DDPStrategy(ParallelStrategy):
    """Replicates the model in every process and averages gradients during backward.

    Args:
        start_method: see :class:`~switchyard.parallel.ParallelStrategy`.
        process_group_backend: default: the accelerator's (gloo on CPU, nccl on CUDA...).
        timeout: how long collectives wait for a missing peer (default: 10 minutes, or
            ``Runtime(timeout=...)``; see :class:`~switchyard.parallel.ParallelStrategy`).
        find_unused_parameters, static_graph, bucket_cap_mb, gradient_as_bucket_view,
        broadcast_buffers, and any other keyword: passed to
        ``torch.nn.parallel.DistributedDataParallel`` as they are.
    """

    def __init__(
        self,
        start_method: StartMethod = "popen",
        process_group_backend: str | None = None,
        timeout: timedelta | float | None = None,
        **ddp_kwargs: Any,
    ) -> None:
        super().__init__(start_method, process_group_backend, timeout)
        self.ddp_kwargs = ddp_kwargs

    def setup_module(self, module: nn.Module) -> nn.Module:
        device = self.root_device
        # DDP wants device_ids only for modules on one indexed device (not the CPU)
        device_ids = [device.index] if device.index is not None else None
        return DistributedDataParallel(module, device_ids=device_ids, **self.ddp_kwargs)

    def no_backward_sync(
        self, module: nn.Module, enabled: bool
    ) -> contextlib.AbstractContextManager[Any]:
        if enabled and isinstance(module, DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"DDPStrategy(start_method={self.start_method!r})"
