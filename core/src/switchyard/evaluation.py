"""Splitting an evaluation set between processes so that every sample is seen exactly once.

``DistributedSampler``, right for training, pads the dataset by repeating samples until every
process has as many: a metric computed over it counts the repeated samples twice. An
evaluation must see each sample once, yet under strategies whose forward runs collectives
(FSDP all-gathers parameters in every forward) every process must also run the same number of
forwards, or the job waits for ever. :class:`EvaluationBatchSampler` does both: it deals the
samples out in turn (``rank::num_replicas``, so the processes' counts differ by at most one)
and, where one process would otherwise run one batch more than another, makes the last batches
of the processes smaller instead of repeating samples. Only where that is impossible (fewer
samples than processes, or batches of one sample) does it need the strategy's word that
processes may run different numbers of forwards
(:attr:`switchyard.Strategy.forward_is_collective`).

See docs/evaluation.md for the whole pattern (reducing the counts, printing once).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler

__all__ = ["EvaluationBatchSampler", "UnevenSplitError"]


class UnevenSplitError(ValueError):
    """The evaluation set cannot be split so that every process runs as many batches as the
    others without repeating a sample (``even_batches=True``). :attr:`problem` says why, in
    numbers; the message adds what to do."""

    def __init__(self, problem: str, remedy: str) -> None:
        super().__init__(f"{problem}. {remedy}")
        self.problem = problem


_REMEDY = (
    "Use a larger batch size (any batch size of 2 or more works once every process has a "
    "sample) or evaluate on fewer processes"
)


class EvaluationBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for one process of an evaluation: over all processes, every
    index of ``dataset`` exactly once.

    Process ``rank`` takes the indices ``rank, rank + num_replicas, ...`` (of a permutation when
    ``shuffle``), cut into batches of ``batch_size``. With ``even_batches`` (the default) every
    process yields the same number of batches: where plain cutting would give a process one
    batch fewer, its last batches are made smaller (``[100, 1]`` and ``[99, 1]`` for 201 samples
    in batches of 100 on two processes). That is impossible when some process has fewer samples
    than the others have batches (fewer samples than processes, or ``batch_size=1`` with a
    number of samples that ``num_replicas`` does not divide): the constructor then raises
    :class:`UnevenSplitError`, saying what to change. ``even_batches=False`` cuts plainly, and
    processes may differ by one batch: only for strategies whose forward runs no collective.

    Used by ``runtime.setup_dataloaders(loader, evaluation=True)``; usable on its own with
    plain ``torch.distributed``::

        sampler = EvaluationBatchSampler(dataset, 64, dist.get_world_size(), dist.get_rank())
        loader = DataLoader(dataset, batch_sampler=sampler)

    Args:
        dataset: the dataset (anything with ``len``) whose indices are split.
        batch_size: the most samples in one batch (at least 1).
        num_replicas: the number of processes.
        rank: this process's rank, in ``[0, num_replicas)``.
        shuffle: deal out a permutation of the indices (the same on every process: drawn from
            ``seed`` and the epoch, see :meth:`set_epoch`) rather than ``0, 1, 2...``.
        seed: the permutation's seed when ``shuffle``.
        even_batches: give every process the same number of batches (see above).
    """

    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        num_replicas: int,
        rank: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        even_batches: bool = True,
    ) -> None:
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("num_replicas", num_replicas, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name}={value!r} must be an integer of at least {least}")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < num_replicas:
            raise ValueError(
                f"rank={rank!r} must be an integer in [0, {num_replicas}) for num_replicas="
                f"{num_replicas}"
            )
        self.size = len(dataset)
        """How many samples the dataset has, over all processes."""
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.even_batches = even_batches
        self.epoch = 0
        """The epoch :meth:`set_epoch` set last: with ``shuffle``, the permutation's seed is
        ``seed + epoch``, the same on every process."""
        self.num_samples = len(range(rank, self.size, num_replicas))
        """How many samples this process evaluates."""
        self._sizes = self._batch_sizes()

    def _batch_sizes(self) -> list[int]:
        """The size of each of this process's batches."""
        n, b = self.num_samples, self.batch_size
        if not self.even_batches:
            return [min(b, n - start) for start in range(0, n, b)]
        most = -(-self.size // self.num_replicas)
        batches = -(-most // b)
        fewest = self.size // self.num_replicas
        if fewest < batches:
            raise UnevenSplitError(
                f"{self.size} samples in batches of at most {b} cannot be split between "
                f"{self.num_replicas} processes so that each runs the same number of batches "
                f"({batches}) without repeating a sample: some process has only {fewest} "
                "sample(s)",
                f"{_REMEDY}, or, if the forward runs no collective, let the processes run "
                "different numbers of batches (even_batches=False)",
            )
        sizes, left = [], n
        for k in range(batches):
            # keep one sample back for each batch still to come, so that none is empty
            size = min(b, left - (batches - k - 1))
            sizes.append(size)
            left -= size
        return sizes

    def set_epoch(self, epoch: int) -> None:
        """Draw the next permutation (``shuffle=True``) from ``seed + epoch``, the same on every
        process, as ``DistributedSampler.set_epoch`` does."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        mine = order[self.rank :: self.num_replicas]
        start = 0
        for size in self._sizes:
            yield mine[start : start + size]
            start += size

    def __len__(self) -> int:
        return len(self._sizes)

    def __repr__(self) -> str:
        return (
            f"EvaluationBatchSampler(size={self.size}, batch_size={self.batch_size}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, shuffle={self.shuffle}, "
            f"even_batches={self.even_batches})"
        )
