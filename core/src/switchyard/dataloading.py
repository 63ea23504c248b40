"""Re-creating a user's DataLoader with a distributed sampler and per-worker seeding."""

from __future__ import annotations

import functools
import os
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from switchyard.seed import ENV_SEED_WORKERS, worker_init_function

# DataLoader arguments carried over unchanged when the loader is rebuilt
_PASSTHROUGH = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


def prepare_dataloader(
    loader: DataLoader[Any], sampler_kwargs: dict[str, int] | None, rank: int
) -> DataLoader[Any]:
    """Return ``loader``, or a copy of it with a ``DistributedSampler`` (``sampler_kwargs`` given)
    and/or a seeding ``worker_init_fn`` (``seed_everything(workers=True)`` was called)."""
    seed_workers = os.environ.get(ENV_SEED_WORKERS) == "1" and loader.num_workers > 0
    shard = sampler_kwargs is not None and not isinstance(loader.dataset, IterableDataset)
    if not shard and not seed_workers:
        return loader
    if type(loader) is not DataLoader:
        raise TypeError(
            f"cannot add a DistributedSampler to a {type(loader).__name__}: only "
            "torch.utils.data.DataLoader can be re-created. Pass use_distributed_sampler=False "
            "and shard the data yourself"
        )
    kwargs: dict[str, Any] = {
        name: getattr(loader, name) for name in _PASSTHROUGH if hasattr(loader, name)
    }
    if loader.num_workers == 0:
        kwargs.pop("prefetch_factor", None)
    if seed_workers and loader.worker_init_fn is None:
        kwargs["worker_init_fn"] = functools.partial(worker_init_function, rank=rank)
    else:
        kwargs["worker_init_fn"] = loader.worker_init_fn
    if not shard:
        kwargs.update(_sampling_kwargs(loader))
        return DataLoader(loader.dataset, **kwargs)
    sampler = loader.sampler
    if not isinstance(sampler, (RandomSampler, SequentialSampler, DistributedSampler)):
        raise TypeError(
            f"the data loader uses a custom sampler ({type(sampler).__name__}) that switchyard "
            "cannot split between processes. Pass use_distributed_sampler=False and give it a "
            "DistributedSampler yourself"
        )
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler).__name__ != "BatchSampler":
        raise TypeError(
            f"the data loader uses a custom batch sampler ({type(batch_sampler).__name__}) that "
            "switchyard cannot split between processes. Pass use_distributed_sampler=False"
        )
    assert sampler_kwargs is not None
    distributed: DistributedSampler[Any] = DistributedSampler(
        loader.dataset,
        shuffle=isinstance(sampler, RandomSampler),
        drop_last=loader.drop_last,
        seed=int(os.environ.get("SWITCHYARD_GLOBAL_SEED", 0)),
        **sampler_kwargs,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=distributed,
        drop_last=loader.drop_last,
        **kwargs,
    )


def _sampling_kwargs(loader: DataLoader[Any]) -> dict[str, Any]:
    if loader.batch_sampler is not None and type(loader.batch_sampler).__name__ != "BatchSampler":
        return {"batch_sampler": loader.batch_sampler}
    return {
        "batch_size": loader.batch_size,
        "sampler": loader.sampler,
        "drop_last": loader.drop_last,
    }
