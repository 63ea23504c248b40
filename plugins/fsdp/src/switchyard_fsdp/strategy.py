"""The FSDP strategy, on FSDP2: ``torch.distributed.fsdp.fully_shard``."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from switchyard import checkpoint
from switchyard.accelerator import Accelerator
from switchyard.environment import ClusterEnvironment
from switchyard.errors import CheckpointError, SelectionError
from switchyard.parallel import ParallelStrategy, StartMethod
from switchyard.precision import Precision
from switchyard.strategy import filter_state

ModulePolicy = (
    type[nn.Module] | set[type[nn.Module]] | Sequence[type[nn.Module]] | Callable[[nn.Module], bool]
)
"""Which submodules a policy selects: module classes (``{nn.TransformerEncoderLayer}``) or a
predicate ``(module) -> bool``."""

StateDictType = Literal["sharded", "full"]

META_FILENAME = "meta.pt"
"""In a sharded checkpoint directory: the entries of ``state`` that are not modules or
optimizers (step counters, scheduler states), written by global rank zero with ``torch.save``."""

_FORMAT = "switchyard-fsdp-sharded"
_UNSUPPORTED_DEVICE_TYPES = ("mps", "xla")


class FSDPStrategy(ParallelStrategy):
    """Fully sharded data parallel on FSDP2 (``torch.distributed.fsdp.fully_shard``).

    Every process holds one shard of each parameter, gradient and optimizer state (a ``DTensor``
    sharded on dimension 0); before a sharded module runs forward or backward its parameters are
    all-gathered, and after backward its gradients are reduce-scattered (averaged). Memory per
    process falls with the number of processes.

    Setup shards each submodule the wrap policy selects (bottom-up), then the root: one
    all-gather per selected submodule, so only one block's full parameters are alive at a time.
    ``fully_shard`` replaces every parameter by a new ``DTensor`` parameter, so an optimizer
    created before ``runtime.setup(model, optimizer)`` is re-pointed at the new parameters by
    parameter name; one set up later with ``runtime.setup_optimizers`` is re-pointed too. An
    optimizer created after setup from ``model.parameters()`` needs nothing.

    ``runtime.init_module(empty_init=True)`` creates the model on the ``meta`` device (no memory);
    setup shards it, allocates only the local shards (``to_empty``) and calls
    ``reset_parameters()`` (or ``_reset_parameters()``) of every submodule that has one (a
    warning names modules with parameters or buffers and neither). On CUDA-like devices
    DTensor's distributed random generator draws the shards as parts of one tensor; on CPU,
    where it has none, each shard is drawn from its own seed (derived from the random state all
    processes share and the shard's index), so shards differ but the values are not those a
    non-sharded initialization would give. Modules set up without ``empty_init`` are not moved
    to the device first (:meth:`module_to_device`): ``fully_shard`` moves each group it shards.

    Mixed precision: the runtime's precision chooses FSDP2's ``MixedPrecisionPolicy`` unless
    ``mixed_precision=`` is given.

    * ``bf16-mixed`` / ``16-mixed``: ``param_dtype`` bfloat16 / float16, ``reduce_dtype``
      float32. The sharded parameters, their gradients and the optimizer stay in float32; the
      all-gathered copies that forward and backward use are bfloat16/float16 (half the
      all-gather traffic and activation memory), and gradients are reduce-scattered in float32.
      The precision's ``torch.autocast`` stays active around forward as well: it computes in the
      same dtype, so casting the (already low-precision) weights costs nothing, while it keeps
      the operations autocast runs in float32 (softmax, norms, losses) in float32 and lets
      code outside the sharded modules (a loss under ``runtime.autocast()``) mix dtypes. The
      two agree by construction; outputs come back as float32 as with any mixed precision.
      ``16-mixed`` swaps the precision's ``GradScaler`` for ``ShardedGradScaler``, which agrees
      on inf/NaN across processes so that every process skips the same steps.
    * ``bf16-true`` / ``16-true`` / ``64-true``: the precision already converted the parameters,
      so ``param_dtype`` and ``reduce_dtype`` are that dtype (the policy changes nothing but makes
      the reduction dtype explicit).
    * ``32-true``: no policy (everything float32).

    Any precision is read through ``compute_dtype`` / ``param_dtype``, so third-party precisions
    get the same treatment.

    Checkpoints: ``runtime.save(path, state)`` writes a *directory* with
    ``torch.distributed.checkpoint`` (every process writes its shards; modules and optimizers go
    through ``get_model_state_dict`` / ``get_optimizer_state_dict``) plus ``meta.pt`` holding
    the other entries, written by rank zero. It is written under a temporary sibling name and
    renamed into place by rank zero after every process finished, so ``path`` only ever names a
    complete checkpoint. ``runtime.load`` reads it into any number of processes (DCP reshards),
    or reads a single-file checkpoint (``state_dict_type="full"``, or one written by another
    strategy) into the sharded model. ``state_dict_type="full"`` makes ``runtime.save`` write one
    ``torch.save`` file from rank zero with consolidated tensors, loadable by a plain
    ``nn.Module`` and a plain optimizer (its optimizer state is keyed by parameter index, as
    ``Optimizer.state_dict`` is); :meth:`full_state_dict` returns one module's consolidated
    state dict.

    Args:
        start_method: ``"popen"`` (torchrun re-runs the script) or ``"spawn"``/``"fork"``/
            ``"forkserver"`` with ``runtime.launch(fn)``.
        process_group_backend: default: the accelerator's (gloo on CPU, nccl on CUDA).
        timeout: how long collectives wait for a missing peer.
        auto_wrap_policy: module classes (``{nn.TransformerEncoderLayer}``) or a predicate
            ``(module) -> bool`` selecting the submodules sharded on their own (one all-gather
            each); without it (and without ``min_num_params``) only the root is sharded, so the
            whole model is gathered at once.
        min_num_params: shard, bottom-up, each submodule holding at least this many parameters
            not already in a sharded submodule (containers ``ModuleList``/``ModuleDict`` are
            never sharded themselves: they have no forward). Exclusive with ``auto_wrap_policy``.
        reshard_after_forward: free the gathered parameters after forward (``True``, ZeRO-3) or
            keep them until backward (``False``, ZeRO-2: less communication, more memory); an
            int reshards to that smaller world size. The root is never resharded after forward
            when ``True``, as FSDP2 recommends, since backward needs it at once.
        cpu_offload: keep sharded parameters, gradients and the optimizer step in CPU memory
            (``True`` or a ``CPUOffloadPolicy``).
        activation_checkpointing_policy: module classes or a predicate; matching submodules are
            wrapped with ``checkpoint_wrapper`` (non-reentrant) before sharding, so their
            activations are recomputed in backward.
        mixed_precision: a ``MixedPrecisionPolicy`` that replaces the one derived from the
            precision.
        state_dict_type: what ``runtime.save`` writes: ``"sharded"`` (a DCP directory) or
            ``"full"`` (one consolidated file). Can be changed on the instance between saves.
        device_mesh: a ``DeviceMesh`` or a shape: ``(world_size,)`` (default) shards over all
            processes; ``(replicas, shard_size)`` is hybrid sharding (HSDP: shard within groups
            of ``shard_size``, replicate across them).
        **fully_shard_kwargs: passed to every ``fully_shard`` call (``shard_placement_fn``...).
    """

    def __init__(
        self,
        start_method: StartMethod = "popen",
        process_group_backend: str | None = None,
        timeout: timedelta | float = timedelta(minutes=30),
        *,
        auto_wrap_policy: ModulePolicy | None = None,
        min_num_params: int | None = None,
        reshard_after_forward: bool | int = True,
        cpu_offload: bool | CPUOffloadPolicy = False,
        activation_checkpointing_policy: ModulePolicy | None = None,
        mixed_precision: MixedPrecisionPolicy | None = None,
        state_dict_type: StateDictType = "sharded",
        device_mesh: DeviceMesh | tuple[int, ...] | None = None,
        **fully_shard_kwargs: Any,
    ) -> None:
        super().__init__(start_method, process_group_backend, timeout)
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
        self.auto_wrap_policy = _check_policy(auto_wrap_policy, "auto_wrap_policy")
        self.min_num_params = min_num_params
        self.activation_checkpointing_policy = _check_policy(
            activation_checkpointing_policy, "activation_checkpointing_policy"
        )
        self.reshard_after_forward = reshard_after_forward
        if not isinstance(cpu_offload, (bool, CPUOffloadPolicy)):
            raise ValueError(
                f"cpu_offload={cpu_offload!r} must be True, False or a CPUOffloadPolicy"
            )
        self.cpu_offload = cpu_offload
        if mixed_precision is not None and not isinstance(mixed_precision, MixedPrecisionPolicy):
            raise ValueError(
                f"mixed_precision must be a torch.distributed.fsdp.MixedPrecisionPolicy, got "
                f"{type(mixed_precision).__name__}"
            )
        self.mixed_precision = mixed_precision
        self.state_dict_type: StateDictType = _check_state_dict_type(state_dict_type)
        if device_mesh is not None and not isinstance(device_mesh, (DeviceMesh, tuple)):
            raise ValueError(
                f"device_mesh={device_mesh!r} must be a DeviceMesh or a shape such as (2, 4)"
            )
        self.device_mesh = device_mesh
        self.fully_shard_kwargs = fully_shard_kwargs
        self._init_tracking()

    def _init_tracking(self) -> None:
        self._mesh: DeviceMesh | None = None
        # optimizer -> the sharded module its parameters belong to (DCP state dicts need both)
        self._optimizer_modules: weakref.WeakKeyDictionary[Optimizer, nn.Module] = (
            weakref.WeakKeyDictionary()
        )
        self._modules: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        # id(unsharded parameter) -> (weak reference to it, its module, its name), so that an
        # optimizer set up after its module can be re-pointed at the sharded parameters
        self._replaced: dict[
            int, tuple[weakref.ref[torch.Tensor], weakref.ref[nn.Module], str]
        ] = {}

    def __getstate__(self) -> dict[str, Any]:
        # spawn pickles the strategy before any process group exists; nothing set up travels
        state = self.__dict__.copy()
        for key in ("_mesh", "_optimizer_modules", "_modules", "_replaced"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_tracking()

    # -- processes ------------------------------------------------------------------------

    def bind(
        self,
        *,
        accelerator: Accelerator,
        precision: Precision,
        environment: ClusterEnvironment,
        devices: Sequence[torch.device],
        num_nodes: int,
    ) -> None:
        device_type = type(accelerator).device_type
        if device_type in _UNSUPPORTED_DEVICE_TYPES:
            raise SelectionError(
                f"FSDPStrategy cannot run on {device_type!r} devices: FSDP2 needs a "
                "torch.distributed backend with all-gather and reduce-scatter (gloo, nccl, "
                "xccl). Use it with the cpu, cuda, rocm or xpu accelerator"
                + (", or strategy='xla_fsdp' on XLA" if device_type == "xla" else "")
            )
        super().bind(
            accelerator=accelerator,
            precision=precision,
            environment=environment,
            devices=devices,
            num_nodes=num_nodes,
        )

    def setup_environment(self) -> None:
        super().setup_environment()
        self._use_sharded_grad_scaler()

    def _use_sharded_grad_scaler(self) -> None:
        # each process sees only its gradient shards: inf/NaN must be agreed on by all of them,
        # or some would skip a step the others take
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler = getattr(self.precision, "scaler", None)
        if (
            not isinstance(scaler, torch.amp.GradScaler)
            or isinstance(scaler, ShardedGradScaler)
            or not scaler.is_enabled()
        ):
            return
        sharded = ShardedGradScaler(self.root_device.type)
        # scale, growth tracker and factors, including state a checkpoint restored before setup
        sharded.load_state_dict(scaler.state_dict())
        self.precision.scaler = sharded  # type: ignore[attr-defined]

    def teardown(self) -> None:
        # the mesh belongs to the process group the base class destroys
        self._mesh = None
        super().teardown()

    @property
    def mesh(self) -> DeviceMesh:
        """The device mesh parameters are sharded over (created on first use)."""
        if self._mesh is None:
            device_type = self.root_device.type
            if isinstance(self.device_mesh, DeviceMesh):
                self._mesh = self.device_mesh
            elif self.device_mesh is None:
                self._mesh = init_device_mesh(device_type, (self.world_size,))
            else:
                shape = tuple(int(n) for n in self.device_mesh)
                size = 1
                for n in shape:
                    size *= n
                if len(shape) not in (1, 2) or size != self.world_size:
                    raise ValueError(
                        f"device_mesh={self.device_mesh!r} must be (world_size,) or (replicas, "
                        f"shard_size) with a product of {self.world_size}, the number of "
                        "processes"
                    )
                names = ("shard",) if len(shape) == 1 else ("replicate", "shard")
                self._mesh = init_device_mesh(device_type, shape, mesh_dim_names=names)
        return self._mesh

    # -- modules and optimizers -----------------------------------------------------------

    def module_init_context(self, empty_init: bool | None = None) -> contextlib.ExitStack:
        """With ``empty_init=True`` modules are created on the ``meta`` device, taking no
        memory; setup allocates only this process's shards and initializes them."""
        if not empty_init:
            return super().module_init_context(empty_init)
        stack = contextlib.ExitStack()
        stack.enter_context(torch.device("meta"))
        stack.enter_context(self.precision.module_init_context())
        return stack

    def module_to_device(self, module: nn.Module) -> nn.Module:
        """Leave the module where it is: each ``fully_shard`` call moves the parameters it
        shards to the device and keeps only their shard there (peak memory: the whole model
        on the CPU and one wrapped block on the device, not the whole model on the device);
        with CPU offload the shards stay in CPU memory, and ``meta`` modules are allocated only
        after sharding (see :meth:`setup_module`)."""
        return module

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: Sequence[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        module = self._apply_activation_checkpointing(module)
        names = {id(p): n for n, p in module.named_parameters()}
        for optimizer in optimizers:
            _check_no_state(optimizer)
        module = self._shard(module)
        for optimizer in optimizers:
            self._repoint(optimizer, module, names)
            self._optimizer_modules[optimizer] = module
        return module, list(optimizers)

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Checkpoint activations, shard, and materialize a ``meta`` module."""
        module = self._apply_activation_checkpointing(module)
        old = [(p, n) for n, p in module.named_parameters()]
        module = self._shard(module)
        module_ref = weakref.ref(module)
        self._replaced = {k: v for k, v in self._replaced.items() if v[0]() is not None}
        self._replaced.update({id(p): (weakref.ref(p), module_ref, n) for p, n in old})
        return module

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        """Re-point an optimizer created from the unsharded parameters of a module set up with
        :meth:`setup_module`; an optimizer created from the sharded ones is left as it is."""
        module: nn.Module | None = None
        for group in optimizer.param_groups:
            params = []
            for p in group["params"]:
                entry = self._replaced.get(id(p))
                owner = entry[1]() if entry is not None else None
                if entry is not None and entry[0]() is p and owner is not None:
                    _check_no_state(optimizer)
                    module = owner
                    p = owner.get_parameter(entry[2])
                params.append(p)
            group["params"] = params
        module = module or self._module_of(optimizer)
        if module is not None:
            self._optimizer_modules[optimizer] = module
        return optimizer

    def _apply_activation_checkpointing(self, module: nn.Module) -> nn.Module:
        policy = self.activation_checkpointing_policy
        if policy is None:
            return module
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            CheckpointImpl,
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )

        if any(isinstance(m, FSDPModule) for m in module.modules()):
            raise ValueError(
                "activation_checkpointing_policy must be applied before sharding, but this "
                "module already contains fully_shard modules"
            )
        predicate = _predicate(policy)
        apply_activation_checkpointing(
            module,
            checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(
                m, checkpoint_impl=CheckpointImpl.NO_REENTRANT
            ),
            check_fn=predicate,
        )
        return module

    def _fully_shard_kwargs(self) -> dict[str, Any]:
        return {
            "mesh": self.mesh,
            "mp_policy": self.mixed_precision_policy(),
            "offload_policy": self._offload_policy(),
            **self.fully_shard_kwargs,
        }

    def _offload_policy(self) -> OffloadPolicy:
        if isinstance(self.cpu_offload, CPUOffloadPolicy):
            return self.cpu_offload
        if self.cpu_offload:
            # pinned memory makes host-device copies asynchronous; there is none on a CPU device
            return CPUOffloadPolicy(pin_memory=self.root_device.type != "cpu")
        return OffloadPolicy()

    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        """The ``MixedPrecisionPolicy`` every ``fully_shard`` call gets (see the class docs)."""
        if self.mixed_precision is not None:
            return self.mixed_precision
        return mixed_precision_policy(self.precision)

    def _shard(self, module: nn.Module) -> nn.Module:
        if isinstance(module, FSDPModule):
            raise ValueError(
                "this module was already sharded with fully_shard; pass the module before "
                "sharding, or set it up with move_to_device=False"
            )
        kwargs = self._fully_shard_kwargs()
        for submodule in self._wrap_targets(module):
            fully_shard(submodule, reshard_after_forward=self.reshard_after_forward, **kwargs)
        # the root's parameters are needed again at once by backward: FSDP2 recommends not
        # resharding it after forward
        root_reshard = False if self.reshard_after_forward is True else self.reshard_after_forward
        fully_shard(module, reshard_after_forward=root_reshard, **kwargs)
        self._materialize(module)
        self._modules.add(module)
        return module

    def _wrap_targets(self, root: nn.Module) -> list[nn.Module]:
        """The submodules to shard on their own, children before their parents."""
        if self.auto_wrap_policy is not None:
            predicate = _predicate(self.auto_wrap_policy)
            # reversed pre-order puts every module after all of its descendants
            return [m for m in reversed(list(root.modules())) if m is not root and predicate(m)]
        if self.min_num_params is None:
            return []
        minimum = self.min_num_params
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

    def _materialize(self, module: nn.Module) -> None:
        tensors = [*module.parameters(), *module.buffers()]
        meta = [t.is_meta for t in tensors]
        if not any(meta):
            return
        if not all(meta):
            # to_empty would discard the real values along with the meta ones
            raise ValueError(
                f"{sum(meta)} of the {len(meta)} parameters and buffers of this "
                f"{type(module).__name__} are on the meta device and the others are not; create "
                "the whole model under runtime.init_module(empty_init=True), or none of it"
            )
        offloaded = isinstance(self._offload_policy(), CPUOffloadPolicy)
        device = torch.device("cpu") if offloaded else self.root_device
        module.to_empty(device=device)
        if device != self.root_device:
            # offloaded parameters live in CPU memory, but buffers are used where forward runs
            for sub in module.modules():
                for name, buffer in sub.named_buffers(recurse=False):
                    sub._buffers[name] = buffer.to(self.root_device)
        uninitialized = []
        with torch.no_grad(), self._shard_rng():
            for sub in module.modules():
                reset = getattr(sub, "reset_parameters", None) or getattr(
                    sub, "_reset_parameters", None
                )
                if callable(reset):
                    reset()
                elif any(True for _ in sub.parameters(recurse=False)) or any(
                    True for _ in sub.buffers(recurse=False)
                ):
                    uninitialized.append(type(sub).__name__)
        if uninitialized:
            warnings.warn(
                "setup materialized a model created with init_module(empty_init=True), but "
                f"{', '.join(sorted(set(uninitialized)))} has parameters or buffers and no "
                "reset_parameters() method: their values are uninitialized memory until you load "
                "a checkpoint",
                stacklevel=3,
            )

    @contextlib.contextmanager
    def _shard_rng(self) -> Iterator[None]:
        """Initialize shards the way DTensor can on this device. Where DTensor has a
        distributed random generator (CUDA-like devices) shards draw as one tensor would;
        elsewhere (CPU) every process would draw the same numbers for its own shard, so each
        shard gets its own seed, derived from the random state all processes share."""
        mesh = self.mesh
        handle = getattr(torch, mesh.device_type, None)
        if handle is not None and hasattr(handle, "set_rng_state"):
            yield
            return
        coordinate = mesh.get_coordinate() or [0]
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="DTensor random operators")
            base = int(torch.randint(0, 2**62, ()).item())
            torch.manual_seed(base + coordinate[-1])
            yield

    def _repoint(self, optimizer: Optimizer, module: nn.Module, names: Mapping[int, str]) -> None:
        """Make the optimizer's groups hold the module's sharded parameters instead of the
        unsharded ones it was created with, matched by parameter name."""
        current = dict(module.named_parameters())
        sharded_ids = {id(p) for p in current.values()}
        for group in optimizer.param_groups:
            params = []
            for p in group["params"]:
                if id(p) in sharded_ids:
                    params.append(p)
                    continue
                name = names.get(id(p))
                if name is None or name not in current:
                    raise ValueError(
                        f"the optimizer holds a parameter of shape {tuple(p.shape)} that is not a "
                        f"parameter of the {type(module).__name__} being set up; create the "
                        "optimizer from model.parameters() of this module, or set up each "
                        "module with its own optimizers"
                    )
                params.append(current[name])
            group["params"] = params

    def _module_of(self, optimizer: Optimizer) -> nn.Module | None:
        module = self._optimizer_modules.get(optimizer)
        if module is not None:
            return module
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for candidate in list(self._modules):
            if any(id(p) in ids for p in candidate.parameters()):
                self._optimizer_modules[optimizer] = candidate
                return candidate
        return None

    def _require_module_of(self, optimizer: Optimizer) -> nn.Module:
        module = self._module_of(optimizer)
        if module is None:
            raise CheckpointError(
                f"{type(optimizer).__name__}'s parameters belong to no module set up by "
                "FSDPStrategy, and sharded optimizer state is addressed by the module's "
                "parameter names; set the optimizer up with runtime.setup(model, optimizer)"
            )
        return module

    # -- the training step ----------------------------------------------------------------

    def no_backward_sync(
        self, module: nn.Module, enabled: bool
    ) -> contextlib.AbstractContextManager[Any]:
        """Accumulate unsharded gradients locally, without reduce-scatter, while active; the
        first backward after it reduces everything accumulated."""
        if not enabled or not isinstance(module, FSDPModule):
            return contextlib.nullcontext()
        return _gradient_sync_off(module)

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        """Clip by the norm of all gradients of all processes (the shards' norms are reduced);
        returns that total norm as a plain tensor, equal on every process."""
        self.precision.unscale_gradients(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return torch.tensor(0.0, device=self.root_device)
        total = torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite=False)
        if isinstance(total, DTensor):
            total = total.full_tensor()
        if error_if_nonfinite and not bool(torch.isfinite(total)):
            raise RuntimeError(
                f"the total norm of order {norm_type} of the gradients is {total.item()}, so "
                "they cannot be clipped; pass error_if_nonfinite=False to clip anyway"
            )
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
        return total

    # -- state dicts ----------------------------------------------------------------------

    def module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """This process's shards (``DTensor`` values), keyed like ``module.state_dict()``."""
        return get_model_state_dict(module)

    def full_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The consolidated state dict (plain CPU tensors) on global rank zero, ``{}`` on the
        others. Every process must call it: the tensors are all-gathered."""
        module = getattr(module, "_forward_module", module)  # a runtime-wrapped module
        return get_model_state_dict(
            module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_module_state_dict(
        self, module: nn.Module, state_dict: Mapping[str, Any], strict: bool = True
    ) -> None:
        """Load sharded (``DTensor``) or full (plain tensor) values into the sharded module."""
        set_model_state_dict(
            module,
            dict(state_dict),
            options=StateDictOptions(full_state_dict=not _is_sharded(state_dict), strict=strict),
        )

    def optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        """This process's shards of the optimizer state, keyed by parameter name."""
        return get_optimizer_state_dict(self._require_module_of(optimizer), optimizer)

    def load_optimizer_state_dict(
        self, optimizer: Optimizer, state_dict: Mapping[str, Any]
    ) -> None:
        """Load sharded or full optimizer state, keyed by parameter name or, as
        ``Optimizer.state_dict()`` writes it, by parameter index."""
        module = self._require_module_of(optimizer)
        state_dict = dict(state_dict)
        if _keyed_by_index(state_dict):
            state_dict = self._index_to_names(module, optimizer, state_dict)
        set_optimizer_state_dict(
            module,
            optimizer,
            state_dict,
            options=StateDictOptions(full_state_dict=not _is_sharded(state_dict)),
        )

    def _full_optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        state = get_optimizer_state_dict(
            self._require_module_of(optimizer),
            optimizer,
            options=StateDictOptions(full_state_dict=True, cpu_offload=True),
        )
        return _names_to_index(state) if state else state

    def _index_to_names(
        self, module: nn.Module, optimizer: Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        # the names of the optimizer's parameters, group by group, as DCP writes them
        named: list[dict[str, Any]] = get_optimizer_state_dict(module, optimizer)["param_groups"]  # type: ignore[assignment]
        loaded = state_dict.get("param_groups", [])
        if len(loaded) != len(named) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(loaded, named, strict=True)
        ):
            raise CheckpointError(
                "the optimizer state does not match the optimizer: it has parameter groups of "
                f"sizes {[len(g['params']) for g in loaded]}, the optimizer "
                f"{[len(g['params']) for g in named]}"
            )
        mapping: dict[Any, str] = {}
        groups = []
        for saved, names in zip(loaded, named, strict=True):
            mapping.update(zip(saved["params"], names["params"], strict=True))
            groups.append({**saved, "params": list(names["params"])})
        state = {mapping[index]: value for index, value in state_dict.get("state", {}).items()}
        return {"state": state, "param_groups": groups}

    # -- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(
        self,
        path: str | Path,
        state: Mapping[str, Any],
        filter: Mapping[str, Callable[[str, Any], bool]] | None = None,
        *,
        state_dict_type: StateDictType | None = None,
    ) -> None:
        """Save ``state`` as a sharded directory (every process writes) or, with
        ``state_dict_type="full"``, as one consolidated file written by rank zero. Every
        process must call it. See the class docs for the layout."""
        kind = _check_state_dict_type(state_dict_type or self.state_dict_type)
        if kind == "full":
            self._save_full(Path(path), state, filter)
        else:
            self._save_sharded(Path(path), state, filter)

    def _save_full(
        self,
        path: Path,
        state: Mapping[str, Any],
        filter: Mapping[str, Callable[[str, Any], bool]] | None,
    ) -> None:
        # checked by every process (a shared file system), so that all of them raise
        if path.is_dir():
            raise CheckpointError(
                f"cannot save a full checkpoint to {str(path)!r}: it is a directory (a sharded "
                "checkpoint?); pass a file path such as 'checkpoints/last.pt'"
            )
        out = self._to_savable(
            state,
            filter,
            module_state=self.full_state_dict,
            optimizer_state=self._full_optimizer_state_dict,
        )
        if self.is_global_zero:
            checkpoint.atomic_save(out, path)
        self.barrier("save_checkpoint")

    def _save_sharded(
        self,
        path: Path,
        state: Mapping[str, Any],
        filter: Mapping[str, Callable[[str, Any], bool]] | None,
    ) -> None:
        sharded: dict[str, Any] = {}
        plain: dict[str, Any] = {}
        for key, obj in state.items():
            if isinstance(obj, nn.Module):
                sharded[key] = filter_state(key, self.module_state_dict(obj), filter)
            elif isinstance(obj, Optimizer):
                sharded[key] = filter_state(key, self.optimizer_state_dict(obj), filter)
            elif hasattr(obj, "state_dict") and callable(obj.state_dict):
                plain[key] = filter_state(key, obj.state_dict(), filter)
            else:
                plain[key] = filter_state(key, obj, filter)
        if path.exists() and not path.is_dir():
            raise CheckpointError(
                f"cannot save a sharded checkpoint to {str(path)!r}: it is a file; sharded "
                "checkpoints are directories (pass another path, or state_dict_type='full')"
            )
        # a sibling, so that the final rename stays within one file system; rank zero names it
        token = self.broadcast(uuid.uuid4().hex[:12] if self.is_global_zero else None)
        temporary = path.with_name(f".{path.name}.tmp-{token}")
        if self.is_global_zero:
            temporary.mkdir(parents=True)
        self.barrier("save_checkpoint")
        if sharded:
            dcp_save(sharded, checkpoint_id=temporary)
        if self.is_global_zero:
            meta = {"format": _FORMAT, "version": 1, "sharded": sorted(sharded), "state": plain}
            checkpoint.atomic_save(meta, temporary / META_FILENAME)
        # every shard is written before the checkpoint takes its final name
        self.barrier("save_checkpoint")
        if self.is_global_zero:
            _replace_directory(temporary, path)
        self.barrier("save_checkpoint")

    def load_checkpoint(
        self,
        path: str | Path,
        state: Mapping[str, Any],
        strict: bool = True,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        """Restore ``state`` from a sharded directory (into any number of processes) or from
        a single file (a full checkpoint, or one another strategy wrote). Every process must
        call it."""
        path = Path(path)
        if not path.is_dir():
            # a single file: every process reads it and keeps its own shards
            return super().load_checkpoint(path, state, strict=strict, weights_only=weights_only)
        return self._load_sharded(path, state, strict, weights_only)

    def _load_sharded(
        self, path: Path, state: Mapping[str, Any], strict: bool, weights_only: bool
    ) -> dict[str, Any]:
        meta_file = path / META_FILENAME
        if not meta_file.is_file():
            raise CheckpointError(
                f"{str(path)!r} is a directory without {META_FILENAME}, so not a sharded "
                f"checkpoint written by FSDPStrategy. It holds: "
                f"{', '.join(sorted(p.name for p in path.iterdir())[:10]) or 'nothing'}"
            )
        meta = checkpoint.load_file(meta_file, weights_only=weights_only)
        if meta.get("format") != _FORMAT:
            raise CheckpointError(f"{str(meta_file)!r} is not a {_FORMAT} metadata file")
        sharded_keys: list[str] = list(meta["sharded"])
        plain: dict[str, Any] = dict(meta["state"])
        missing = [key for key in state if key not in sharded_keys and key not in plain]
        if missing and strict:
            raise KeyError(
                f"the checkpoint has no entry {missing[0]!r}; it holds "
                f"{sorted([*sharded_keys, *plain])}. Pass strict=False to load what is there."
            )
        template: dict[str, Any] = {}
        for key, obj in state.items():
            if key not in sharded_keys:
                if isinstance(obj, (nn.Module, Optimizer)) and key in plain:
                    raise CheckpointError(
                        f"checkpoint entry {key!r} was saved as a plain value, but "
                        f"state[{key!r}] is a {type(obj).__name__}"
                    )
                continue
            if isinstance(obj, nn.Module):
                template[key] = self.module_state_dict(obj)
            elif isinstance(obj, Optimizer):
                template[key] = self.optimizer_state_dict(obj)
            else:
                raise CheckpointError(
                    f"checkpoint entry {key!r} holds a sharded module or optimizer, but "
                    f"state[{key!r}] is a {type(obj).__name__}"
                )
        if template:
            dcp_load(
                template,
                checkpoint_id=path,
                planner=DefaultLoadPlanner(allow_partial_load=not strict),
            )
        for key, value in template.items():
            obj = state[key]
            if isinstance(obj, nn.Module):
                set_model_state_dict(obj, value, options=StateDictOptions(strict=strict))
            else:
                set_optimizer_state_dict(self._require_module_of(obj), obj, value)
        for key, obj in state.items():
            if key not in plain:
                continue
            if hasattr(obj, "load_state_dict") and callable(obj.load_state_dict):
                obj.load_state_dict(plain[key])
            elif isinstance(state, MutableMapping):
                state[key] = plain[key]
        remainder = {key: value for key, value in plain.items() if key not in state}
        unrequested = {key for key in sharded_keys if key not in state}
        if unrequested:
            # not asked for, so there is no module to shard them into: full tensors, read by
            # every process
            from torch.distributed.checkpoint.state_dict_loader import (
                _load_state_dict_from_keys,
            )

            remainder.update(_load_state_dict_from_keys(unrequested, checkpoint_id=path))
        return remainder

    def __repr__(self) -> str:
        extra = ", cpu_offload=True" if self.cpu_offload else ""
        return f"FSDPStrategy(start_method={self.start_method!r}{extra})"


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


@contextlib.contextmanager
def _gradient_sync_off(module: FSDPModule) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _check_policy(policy: Any, name: str) -> Any:
    if policy is None:
        return None
    if isinstance(policy, type):
        policy = {policy}
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = frozenset(policy)
        bad = [c for c in classes if not (isinstance(c, type) and issubclass(c, nn.Module))]
        if bad or not classes:
            raise ValueError(
                f"{name} must be nn.Module classes (e.g. {{nn.TransformerEncoderLayer}}) or a "
                f"function (module) -> bool; got {policy!r}"
            )
        return classes
    if callable(policy):
        return policy
    raise ValueError(
        f"{name} must be nn.Module classes (e.g. {{nn.TransformerEncoderLayer}}) or a "
        f"function (module) -> bool; got {type(policy).__name__}"
    )


def _predicate(policy: Any) -> Callable[[nn.Module], bool]:
    if isinstance(policy, frozenset):
        classes = tuple(policy)
        return lambda module: isinstance(module, classes)
    return policy


def _check_state_dict_type(value: str) -> StateDictType:
    if value not in ("sharded", "full"):
        raise ValueError(f"state_dict_type={value!r} must be 'sharded' or 'full'")
    return value  # type: ignore[return-value]


def _check_no_state(optimizer: Optimizer) -> None:
    if optimizer.state:
        raise ValueError(
            f"{type(optimizer).__name__} already holds state for {len(optimizer.state)} "
            "parameter(s) (it has stepped). Sharding replaces the parameters, so set the "
            "optimizer up before its first step; restore its state afterwards with runtime.load"
        )


def _is_sharded(state_dict: Mapping[str, Any]) -> bool:
    """Whether a (model or optimizer) state dict holds DTensor shards."""
    stack: list[Any] = [state_dict]
    while stack:
        value = stack.pop()
        if isinstance(value, DTensor):
            return True
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return False


def _keyed_by_index(state_dict: Mapping[str, Any]) -> bool:
    groups = state_dict.get("param_groups") or []
    return any(isinstance(p, int) for g in groups for p in g.get("params", []))


def _names_to_index(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter name, as ``Optimizer.state_dict()`` writes
    it: parameters numbered in group order."""
    index: dict[str, int] = {}
    groups = []
    for group in state_dict["param_groups"]:
        ids = []
        for name in group["params"]:
            index.setdefault(name, len(index))
            ids.append(index[name])
        groups.append({**group, "params": ids})
    state = {index[name]: value for name, value in state_dict["state"].items()}
    return {"state": state, "param_groups": groups}


def _replace_directory(temporary: Path, path: Path) -> None:
    """Give the complete ``temporary`` directory the name ``path``. An old checkpoint there is
    moved aside first and deleted only once the new one has its name: a crash leaves the old
    checkpoint (under ``.NAME.old-*``) or the new one, never a partial one at ``path``."""
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(path, old)
    try:
        os.replace(temporary, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)  # put the old checkpoint back
        raise
    checkpoint.fsync_directory(path.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
