"""What FSDPStrategy shards and how: the wrap and activation-checkpointing policies, the
submodules they select, and the ``MixedPrecisionPolicy`` a precision implies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

from switchyard.precision import Precision

ModulePolicy = (
    type[nn.Module] | set[type[nn.Module]] | Sequence[type[nn.Module]] | Callable[[nn.Module], bool]
)
"""Which submodules a policy selects: module classes (``{nn.TransformerEncoderLayer}``) or a
predicate ``(module) -> bool``."""

CheckedPolicy = frozenset[type[nn.Module]] | Callable[[nn.Module], bool]
"""A :data:`ModulePolicy` as :func:`check_policy` returns it: a set of classes, or the
predicate."""


def check_policy(policy: Any, name: str) -> CheckedPolicy | None:
    """``policy`` (the argument ``name``) as a frozen set of module classes or a predicate;
    ``ValueError`` for anything else."""
    if policy is None:
        return None
    if isinstance(policy, type):
        policy = {policy}
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = frozenset(policy)
        bad = [c for c in classes if not (isinstance(c, type) and issubclass(c, nn.Module))]
        if bad or not classes:
            raise _policy_error(name, repr(policy))
        return classes
    if callable(policy):
        return policy
    raise _policy_error(name, type(policy).__name__)


def _policy_error(name: str, got: str) -> ValueError:
    return ValueError(
        f"{name} must be nn.Module classes (e.g. {{nn.TransformerEncoderLayer}}) or a "
        f"function (module) -> bool; got {got}"
    )


def check_wrap_policy(
    auto_wrap_policy: ModulePolicy | None, min_num_params: int | None
) -> CheckedPolicy | None:
    """Check the two ways of choosing the submodules to shard (only one may be given);
    returns the checked ``auto_wrap_policy``."""
    if auto_wrap_policy is not None and min_num_params is not None:
        raise ValueError(
            "auto_wrap_policy and min_num_params both choose which submodules to shard; "
            "pass one of them"
        )
    if min_num_params is not None and (
        isinstance(min_num_params, bool) or not isinstance(min_num_params, int)
    ):
        raise ValueError(f"min_num_params={min_num_params!r} must be a positive integer")
    if min_num_params is not None and min_num_params < 1:
        raise ValueError(f"min_num_params={min_num_params!r} must be a positive integer")
    return check_policy(auto_wrap_policy, "auto_wrap_policy")


def predicate(policy: CheckedPolicy) -> Callable[[nn.Module], bool]:
    """The checked policy as a function ``(module) -> bool``."""
    if isinstance(policy, frozenset):
        classes = tuple(policy)
        return lambda module: isinstance(module, classes)
    return policy


def wrap_targets(
    root: nn.Module, auto_wrap_policy: CheckedPolicy | None, min_num_params: int | None
) -> list[nn.Module]:
    """The submodules of ``root`` to shard on their own, children before their parents: those
    ``auto_wrap_policy`` selects or, with ``min_num_params``, each (bottom-up) that holds at
    least that many parameters not already in a target; none without either."""
    if auto_wrap_policy is not None:
        selects = predicate(auto_wrap_policy)
        # reversed pre-order puts every module after all of its descendants
        return [m for m in reversed(list(root.modules())) if m is not root and selects(m)]
    if min_num_params is None:
        return []
    minimum = min_num_params
    targets: list[nn.Module] = []
    seen: set[int] = set()

    def visit(module: nn.Module) -> int:
        # returns how many parameters below (and in) module are not yet in a target
        if id(module) in seen:
            return 0
        seen.add(id(module))
        count = sum(p.numel() for p in module.parameters(recurse=False))
        count += sum(visit(child) for child in module.children())
        if (
            module is not root
            and count >= minimum
            and not isinstance(module, (nn.ModuleList, nn.ModuleDict))
        ):
            targets.append(module)
            return 0
        return count

    visit(root)
    return targets


def apply_activation_checkpointing(module: nn.Module, policy: CheckedPolicy | None) -> nn.Module:
    """Wrap the submodules ``policy`` selects in ``checkpoint_wrapper`` (non-reentrant), in
    place, so that their activations are recomputed in backward; must precede sharding."""
    if policy is None:
        return module
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as apply,
    )

    if any(isinstance(m, FSDPModule) for m in module.modules()):
        raise ValueError(
            "activation_checkpointing_policy must be applied before sharding, but this "
            "module already contains fully_shard modules"
        )
    apply(
        module,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(
            m, checkpoint_impl=CheckpointImpl.NO_REENTRANT
        ),
        check_fn=predicate(policy),
    )
    return module


def mixed_precision_policy(precision: Precision) -> MixedPrecisionPolicy:
    """The ``MixedPrecisionPolicy`` for a precision: mixed precisions (a ``compute_dtype``)
    gather parameters in that dtype and reduce gradients in the parameters' dtype (float32);
    true precisions in another dtype than float32 gather and reduce in it; float32 needs no
    policy (FSDP2's default ``MixedPrecisionPolicy()`` casts nothing)."""
    if precision.compute_dtype is not None:
        return MixedPrecisionPolicy(
            param_dtype=precision.compute_dtype, reduce_dtype=precision.param_dtype
        )
    if precision.param_dtype != torch.float32:
        return MixedPrecisionPolicy(
            param_dtype=precision.param_dtype, reduce_dtype=precision.param_dtype
        )
    return MixedPrecisionPolicy()
