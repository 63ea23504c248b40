"""Seeding every random number generator a training run uses."""

from __future__ import annotations

import operator
import os
import random
import sys
import weakref
from typing import TYPE_CHECKING, Any

import torch

from switchyard.errors import ArgumentError
from switchyard.validation import parse_int

if TYPE_CHECKING:
    from switchyard.accelerator import Accelerator

_MAX_SEED = 2**32 - 1
ENV_SEED = "SWITCHYARD_GLOBAL_SEED"
ENV_SEED_WORKERS = "SWITCHYARD_SEED_WORKERS"

# the accelerators of this process's runtimes, whose generators torch.manual_seed may not reach
_accelerators: weakref.WeakSet[Accelerator] = weakref.WeakSet()


def track_accelerator(accelerator: Accelerator) -> None:
    """Let :func:`seed_everything` seed ``accelerator``'s devices from now on, and seed them now
    if a global seed was set before the device was (in the launcher, say). Called by
    ``Strategy.setup_environment`` in every process."""
    _accelerators.add(accelerator)
    if ENV_SEED in os.environ:
        accelerator.manual_seed(_environment_seed())


def seed_everything(seed: int | None = None, workers: bool = False) -> int:
    """Seed Python's ``random``, NumPy (when installed) and torch on every device.

    ``seed=None`` reuses ``SWITCHYARD_GLOBAL_SEED`` (so processes started by switchyard agree) or
    falls back to 0. ``workers=True`` makes data-loader workers prepared by
    ``Runtime.setup_dataloaders`` derive distinct, reproducible seeds from it. The seed is exported
    to child processes. Returns the seed used.
    """
    if seed is None:
        seed = _environment_seed()
    try:
        # integers only (NumPy's too): int(1.5) would be 1, and two seeds must not seed alike
        if isinstance(seed, bool):
            raise TypeError
        seed = operator.index(seed)
    except TypeError:
        raise ArgumentError(
            f"seed={seed!r} ({type(seed).__name__}) must be an integer in [0, {_MAX_SEED}]"
        ) from None
    if not 0 <= seed <= _MAX_SEED:
        raise ArgumentError(f"seed={seed} is out of range; pass an integer in [0, {_MAX_SEED}]")
    os.environ[ENV_SEED] = str(seed)
    os.environ[ENV_SEED_WORKERS] = "1" if workers else "0"
    random.seed(seed)
    numpy = sys.modules.get("numpy")  # seed NumPy only if the program uses it; never import it
    if numpy is not None:
        numpy.random.seed(seed)
    torch.manual_seed(seed)  # seeds the generators of every device type torch registers
    for accelerator in list(_accelerators):
        accelerator.manual_seed(seed)
    return seed


def worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """``worker_init_fn`` for data loaders: a seed distinct per (global seed, rank, worker,
    epoch).

    In a worker, ``torch.initial_seed()`` is the loader's base seed for this epoch (drawn from
    the seeded generator each time the loader is iterated) plus the worker id; mixing it in keeps
    random augmentations different from one epoch to the next, as PyTorch's own worker seeding
    does, while the rank makes processes that share the global seed differ. The numbers are
    mixed through torch's generator, so neighbouring ranks and workers get unrelated seeds
    rather than consecutive ones.
    """
    global_seed = _environment_seed()
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    base_seed = torch.initial_seed()
    generator = torch.Generator().manual_seed(
        (base_seed * 1_000_003**2 + global_seed * 1_000_003 + rank * 10_007 + worker_id)
        % (2**63 - 1)
    )
    seed = int(torch.randint(0, _MAX_SEED, (1,), generator=generator).item())
    random.seed(seed)
    torch.manual_seed(seed)
    numpy: Any = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed)


def _environment_seed() -> int:
    """``SWITCHYARD_GLOBAL_SEED`` (what :func:`seed_everything` exports), 0 when unset; an
    :class:`~switchyard.errors.ArgumentError` naming it when it is not a seed."""
    value = os.environ.get(ENV_SEED, "")
    if not value.strip():
        return 0
    try:
        return parse_int(value, minimum=0, maximum=_MAX_SEED)
    except ValueError as problem:
        raise ArgumentError(
            f"{ENV_SEED}={value[:80]!r} {problem}: it holds the seed seed_everything() exported, "
            f"an integer in [0, {_MAX_SEED}]. Fix or unset it, or pass the seed explicitly"
        ) from None
