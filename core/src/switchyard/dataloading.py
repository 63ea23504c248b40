"""Re-creating a user's DataLoader with a distributed sampler (for training, or one that sees every
sample once, for evaluation) and per-worker seeding."""

from __future__ import annotations

import functools
import os
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from switchyard.errors import ArgumentError
from switchyard.evaluation import _REMEDY, EvaluationBatchSampler, UnevenSplitError
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
    loader: DataLoader[Any],
    sampler_kwargs: dict[str, int] | None,
    rank: int,
    *,
    evaluation: bool = False,
    even_batches: bool = True,
    strategy_name: str = "the strategy",
) -> DataLoader[Any]:
    """Return ``loader``, or a copy of it with a ``DistributedSampler`` (``sampler_kwargs`` given)
    and/or a seeding ``worker_init_fn`` (``seed_everything(workers=True)`` was called).

    ``evaluation=True`` splits with an :class:`~switchyard.evaluation.EvaluationBatchSampler`
    instead (every sample once; the same number of batches on every process unless
    ``even_batches=False``); the loader is checked for what that split cannot honour even when
    nothing is split (one process), so that a script fails the same way on one process as on
    many. ``strategy_name`` names the strategy in the error an impossible even split raises."""
    if evaluation:
        _check_evaluation_loader(loader)
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
    if evaluation:
        try:
            batches = EvaluationBatchSampler(
                loader.dataset,  # type: ignore[arg-type]
                batch_size=loader.batch_size or 1,
                shuffle=isinstance(sampler, RandomSampler),
                seed=int(os.environ.get("SWITCHYARD_GLOBAL_SEED", 0)),
                even_batches=even_batches,
                **sampler_kwargs,
            )
        except UnevenSplitError as error:
            raise ArgumentError(
                f"setup_dataloaders(evaluation=True): {strategy_name} may run collectives in "
                "the module's forward (its forward_is_collective is True), so every process "
                f"must run the same number of batches, but {error.problem}. {_REMEDY}"
            ) from None
        return DataLoader(loader.dataset, batch_sampler=batches, **kwargs)
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


def _check_evaluation_loader(loader: DataLoader[Any]) -> None:
    """Refuse, for ``evaluation=True``, a loader whose samples cannot be dealt out once each."""
    what = "setup_dataloaders(evaluation=True) gives every sample to exactly one process"
    if isinstance(loader.dataset, IterableDataset):
        raise ArgumentError(
            f"{what}, which needs a dataset with len() and indices; this loader's dataset is an "
            f"IterableDataset ({type(loader.dataset).__name__}). Shard it between processes "
            "yourself (runtime.global_rank, runtime.world_size) and set it up with "
            "evaluation=False, use_distributed_sampler=False"
        )
    if type(loader) is not DataLoader:
        raise ArgumentError(
            f"{what} by re-creating the loader, and only torch.utils.data.DataLoader can be "
            f"re-created, not a {type(loader).__name__}"
        )
    if loader.batch_sampler is None or type(loader.batch_sampler).__name__ != "BatchSampler":
        described = "no batch size" if loader.batch_sampler is None else "a custom batch sampler"
        raise ArgumentError(
            f"{what} in batches it makes itself; this loader has {described} "
            f"({type(loader.batch_sampler).__name__}). Give the DataLoader a batch_size (and "
            "no batch_sampler)"
        )
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        raise ArgumentError(
            f"{what} and can replace only a sequential or random sampler; this loader uses "
            f"{type(loader.sampler).__name__}. Give the DataLoader shuffle=False (or True) "
            "instead of a sampler"
        )
    if loader.drop_last:
        raise ArgumentError(
            f"{what}, and this loader has drop_last=True, which leaves samples out of the "
            "metric. Give the evaluation DataLoader drop_last=False"
        )


def _sampling_kwargs(loader: DataLoader[Any]) -> dict[str, Any]:
    if loader.batch_sampler is not None and type(loader.batch_sampler).__name__ != "BatchSampler":
        return {"batch_sampler": loader.batch_sampler}
    return {
        "batch_size": loader.batch_size,
        "sampler": loader.sampler,
        "drop_last": loader.drop_last,
    }
