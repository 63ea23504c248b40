"""Batches through XLA's parallel loader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader


class XLADeviceLoader:
    """The user's data loader, read through ``torch_xla``'s ``MpDeviceLoader``: batches are sent
    to the device by background threads while the previous step runs, and each new batch ends
    the step before it (``torch_xla.sync()``) where the step did not end already.

    Everything but iteration is the user's loader's (``sampler``, ``dataset``, ``len``), so
    the runtime still advances a ``DistributedSampler``'s epoch.

    Args:
        loader: the loader to read.
        device: the XLA device batches go to.
        input_sharding: for SPMD, how batch tensors are sharded over the device mesh (an
            object with ``xla_spec(tensor)``, as ``torch_xla``'s ``ShardingSpec``).
    """

    def __init__(
        self, loader: DataLoader[Any], device: torch.device, input_sharding: Any = None
    ) -> None:
        import torch_xla.distributed.parallel_loader as pl

        self._loader = loader
        kwargs = {} if input_sharding is None else {"input_sharding": input_sharding}
        self._device_loader = pl.MpDeviceLoader(loader, device, **kwargs)

    @property
    def dataloader(self) -> DataLoader[Any]:
        return self._loader

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._device_loader)

    def __getattr__(self, name: str) -> Any:
        if name == "_loader":
            raise AttributeError(name)
        return getattr(self._loader, name)
