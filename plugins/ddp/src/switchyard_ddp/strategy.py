"""The DDP strategy."""

from __future__ import annotations

import contextlib
import weakref
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
        **ddp_kwargs: passed to ``torch.nn.parallel.DistributedDataParallel`` as they are
            (``find_unused_parameters``, ``static_graph``, ``bucket_cap_mb``,
            ``gradient_as_bucket_view``, ``broadcast_buffers``...).
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
        self._wrapped: weakref.WeakSet[DistributedDataParallel] = weakref.WeakSet()

    def setup_module(self, module: nn.Module) -> nn.Module:
        device = self.root_device
        # DDP wants device_ids only for modules on one indexed device (not the CPU)
        device_ids = [device.index] if device.index is not None else None
        wrapped = DistributedDataParallel(module, device_ids=device_ids, **self.ddp_kwargs)
        self._wrapped.add(wrapped)
        return wrapped

    def __getstate__(self) -> dict[str, Any]:
        # sent to spawned processes before any module is wrapped; a WeakSet does not pickle
        state = self.__dict__.copy()
        state.pop("_wrapped", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._wrapped = weakref.WeakSet()

    def teardown(self) -> None:
        """Retire every module this strategy wrapped (see :func:`_retire`; the modules they
        wrap stay usable on their own), then destroy the process group."""
        for module in list(self._wrapped):
            _retire(module)
        self._wrapped = weakref.WeakSet()
        super().teardown()

    def no_backward_sync(
        self, module: nn.Module, enabled: bool
    ) -> contextlib.AbstractContextManager[Any]:
        if enabled and isinstance(module, DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"DDPStrategy(start_method={self.start_method!r})"


def _retire(module: DistributedDataParallel) -> None:
    """Let go of what ties ``module`` to the process group (its reducer, the logger holding the
    reducer, its handle on the group) while the group is still registered.

    Left to the garbage collector, the reducer held the group's last reference once the group
    was destroyed: torch frees a reducer with the GIL held (its Python holder does not release
    it, unlike the process group's own), so the group's destructor then joined its gloo worker
    threads with the GIL held, and a worker still finishing the last collective (freeing a
    tensor whose Python object it owns needs the GIL) waited for it for ever. Released here,
    the last reference is the one ``destroy_process_group`` drops, through the holder that
    releases the GIL, and the group's threads end at teardown."""
    for name in ("logger", "reducer", "process_group"):
        with contextlib.suppress(AttributeError):
            delattr(module, name)
