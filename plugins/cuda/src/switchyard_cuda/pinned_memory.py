"""Data loaders that put batches in page-locked (pinned) host memory.

A copy to the GPU from pinned memory runs asynchronously (``non_blocking=True``, which the
runtime's data loader uses for every device but the CPU); from ordinary pageable memory the
driver first copies it into a pinned staging buffer and the copy blocks. The loader's own
``pin_memory`` does the pinning in a background thread, overlapping it with the step.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import BatchSampler, DataLoader, IterableDataset

# DataLoader arguments that a re-created loader keeps as they were
_KEPT = (
    "num_workers",
    "collate_fn",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "in_order",
)


def pinned(loader: DataLoader[Any]) -> DataLoader[Any]:
    """``loader`` itself if it already pins memory or is not a plain ``DataLoader`` (a subclass
    may not be re-created from its attributes), else the same loader re-created with
    ``pin_memory=True``: same dataset, sampler or batch sampler objects, workers and collation."""
    if loader.pin_memory or type(loader) is not DataLoader:
        return loader
    kwargs: dict[str, Any] = {
        name: getattr(loader, name) for name in _KEPT if hasattr(loader, name)
    }
    if loader.num_workers == 0:
        kwargs.pop("prefetch_factor", None)  # refused without workers
    if isinstance(loader.dataset, IterableDataset):
        # an iterable dataset takes no sampler
        kwargs.update(batch_size=loader.batch_size, drop_last=loader.drop_last)
    elif loader.batch_sampler is None:
        # no automatic batching: the sampler yields the items themselves
        kwargs.update(batch_size=None, sampler=loader.sampler)
    elif type(loader.batch_sampler) is BatchSampler:
        kwargs.update(
            batch_size=loader.batch_size, sampler=loader.sampler, drop_last=loader.drop_last
        )
    else:
        kwargs.update(batch_sampler=loader.batch_sampler)
    return DataLoader(loader.dataset, pin_memory=True, **kwargs)
