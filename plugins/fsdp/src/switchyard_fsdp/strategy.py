"""The FSDP strategy, on FSDP2: ``torch.distributed.fsdp.fully_shard``."""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
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
from switchyard.parameters import ParameterNames
from switchyard.precision import Precision
from switchyard_fsdp import checkpoint as fsdp_checkpoint
from switchyard_fsdp import wrapping
from switchyard_fsdp.checkpoint import META_FILENAME, StateDictType, check_state_dict_type
from switchyard_fsdp.wrapping import ModulePolicy, mixed_precision_policy

__all__ = [
    "FSDPStrategy",
    # defined in wrapping and checkpoint, importable from here as before
    "ModulePolicy",
    "StateDictType",
    "META_FILENAME",
    "mixed_precision_policy",
]


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
    through ``get_model_state_dict`` / ``get_optimizer_state_dict``, and any other entry holding
    a ``DTensor``, such as a plain ``{"model": model.state_dict()}``, is written shard by shard
    too) plus ``meta.pt`` holding the other entries, written by rank zero. It is written under a
    temporary sibling name and renamed into place by rank zero after every process finished, so
    ``path`` only ever names a complete checkpoint (the format and its safe reading are core's,
    :mod:`switchyard.sharded`: one process reads it without this plugin with
    ``switchyard.checkpoint.load``, and ``switchyard consolidate`` turns it into one file).
    ``runtime.load`` reads it into any number of processes (DCP reshards),
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
        timeout: how long collectives wait for a missing peer (default: 10 minutes, or
            ``Runtime(timeout=...)``; see :class:`~switchyard.parallel.ParallelStrategy`).
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

    forward_is_collective: ClassVar[bool] = True
    """Every forward all-gathers the sharded parameters: evaluation must give every process
    the same number of batches (the base class's default, stated here because it matters)."""

    def __init__(
        self,
        start_method: StartMethod = "popen",
        process_group_backend: str | None = None,
        timeout: timedelta | float | None = None,
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
        self.auto_wrap_policy = wrapping.check_wrap_policy(auto_wrap_policy, min_num_params)
        self.min_num_params = min_num_params
        self.activation_checkpointing_policy = wrapping.check_policy(
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
        self.state_dict_type: StateDictType = check_state_dict_type(state_dict_type)
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
        self._names: list[ParameterNames] = []

    def __getstate__(self) -> dict[str, Any]:
        # spawn pickles the strategy before any process group exists; nothing set up travels
        state = self.__dict__.copy()
        for key in ("_mesh", "_optimizer_modules", "_modules", "_names"):
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
        """Refuse an accelerator that declares no sharding collectives, before any process
        starts (a process group backend is checked by ``ParallelStrategy``)."""
        if not type(accelerator).supports_sharding:
            raise SelectionError(
                f"FSDPStrategy shards parameters with all-gather and reduce-scatter, which "
                f"{type(accelerator).__name__} ({type(accelerator).device_type!r}) declares it "
                "does not support (supports_sharding=False); use a strategy that does not "
                "shard (ddp) or one the accelerator's plugin provides"
            )
        super().bind(
            accelerator=accelerator,
            precision=precision,
            environment=environment,
            devices=devices,
            num_nodes=num_nodes,
        )

    def connect_precision(self, precision: Precision) -> Precision:
        """A gradient scaler sees only this process's gradient shards: ``ShardedGradScaler``
        agrees on inf/NaN across processes, so that every process skips the same steps."""
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        precision.set_scaler_factory(ShardedGradScaler)
        return precision

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
        """Shard the module, and re-point the optimizers (created from its unsharded
        parameters) at the sharded ones by name."""
        if not optimizers:
            return self.setup_module(module), []
        for optimizer in optimizers:
            _check_no_state(optimizer)
        module = wrapping.apply_activation_checkpointing(
            module, self.activation_checkpointing_policy
        )
        names = ParameterNames(module)
        module = self._shard(module)
        for optimizer in optimizers:
            names.repoint(optimizer, module)
            _check_owned(optimizer, module)
            self._optimizer_modules[optimizer] = module
        return module, list(optimizers)

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Checkpoint activations, shard, and materialize a ``meta`` module."""
        module = wrapping.apply_activation_checkpointing(
            module, self.activation_checkpointing_policy
        )
        # the names after activation checkpointing (which renames parameters), for optimizers
        # set up later from the unsharded parameters
        self._names = [n for n in self._names if n.module is not None]
        self._names.append(ParameterNames(module))
        return self._shard(module)

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        """Re-point an optimizer created from the unsharded parameters of a module set up with
        :meth:`setup_module` at the sharded ones, and remember which module it belongs to
        (sharded state dicts are addressed by the module's parameter names)."""
        for names in self._names:
            if names.owns(optimizer):
                _check_no_state(optimizer)
                names.repoint(optimizer)
        module = self._module_of(optimizer)
        if module is not None:
            _check_owned(optimizer, module)
        return optimizer

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
        return wrapping.wrap_targets(root, self.auto_wrap_policy, self.min_num_params)

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
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module)

    def full_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The consolidated state dict (plain CPU tensors) on global rank zero, ``{}`` on the
        others. Every process must call it: the tensors are all-gathered."""
        module = getattr(module, "_forward_module", module)  # a runtime-wrapped module
        return fsdp_checkpoint.full_module_state_dict(module)

    def load_module_state_dict(
        self, module: nn.Module, state_dict: Mapping[str, Any], strict: bool = True
    ) -> None:
        """Load sharded (``DTensor``) or full (plain tensor) values into the sharded module."""
        fsdp_checkpoint.load_module_state(module, state_dict, strict)

    def optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        """This process's shards of the optimizer state, keyed by parameter name."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self._require_module_of(optimizer), optimizer)

    def load_optimizer_state_dict(
        self, optimizer: Optimizer, state_dict: Mapping[str, Any]
    ) -> None:
        """Load sharded or full optimizer state, keyed by parameter name or, as
        ``Optimizer.state_dict()`` writes it, by parameter index."""
        fsdp_checkpoint.load_optimizer_state(
            self._require_module_of(optimizer), optimizer, state_dict
        )

    def _full_optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        return fsdp_checkpoint.full_optimizer_state_dict(
            self._require_module_of(optimizer), optimizer
        )

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
        process must call it. See the class docs for the layout.

        Sharded tensors are saved completely wherever they are: modules, optimizers and any
        other value holding a ``DTensor`` (a ``model.state_dict()`` passed as a plain dict) go
        to the sharded part of the directory; under ``"full"`` every ``DTensor`` is gathered.
        """
        kind = check_state_dict_type(state_dict_type or self.state_dict_type)
        path = Path(path)
        if kind == "sharded":
            savable = self._to_savable(state, filter)
            sharded = {
                k: v
                for k, v in savable.items()
                if isinstance(state[k], (nn.Module, Optimizer))
                or fsdp_checkpoint.holds_sharded_tensors(v)
            }
            plain = {k: v for k, v in savable.items() if k not in sharded}
            fsdp_checkpoint.save_sharded(self, path, sharded, plain)
            return
        # checked by every process (a shared file system), so that all of them raise
        if path.is_dir():
            raise CheckpointError(
                f"cannot save a full checkpoint to {str(path)!r}: it is a directory (a sharded "
                "checkpoint?); pass a file path such as 'checkpoints/last.pt'"
            )
        full = self._to_savable(
            state,
            filter,
            module_state=self.full_state_dict,
            optimizer_state=self._full_optimizer_state_dict,
        )
        full = {
            k: fsdp_checkpoint.gather_full(v) if fsdp_checkpoint.holds_sharded_tensors(v) else v
            for k, v in full.items()
        }
        failure: Exception | None = None
        if self.is_global_zero:
            try:
                checkpoint.atomic_save(full, path)
            except Exception as error:
                failure = error
        self._agree_on_save(path, failure)

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
        path = checkpoint.resolve(Path(path))
        if not path.is_dir():
            # a single file: every process reads it and keeps its own shards
            return super().load_checkpoint(path, state, strict=strict, weights_only=weights_only)
        return fsdp_checkpoint.load_sharded(
            self, path, state, strict, weights_only, module_of=self._require_module_of
        )

    def __repr__(self) -> str:
        extra = ", cpu_offload=True" if self.cpu_offload else ""
        return f"FSDPStrategy(start_method={self.start_method!r}{extra})"


@contextlib.contextmanager
def _gradient_sync_off(module: FSDPModule) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _check_owned(optimizer: Optimizer, module: nn.Module) -> None:
    held = {id(p) for p in module.parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in held:
                raise ValueError(
                    f"the optimizer holds a parameter of shape {tuple(p.shape)} that is not a "
                    f"parameter of the {type(module).__name__} being set up; create the "
                    "optimizer from model.parameters() of this module, or set up each "
                    "module with its own optimizers"
                )


def _check_no_state(optimizer: Optimizer) -> None:
    if optimizer.state:
        raise ValueError(
            f"{type(optimizer).__name__} already holds state for {len(optimizer.state)} "
            "parameter(s) (it has stepped). Sharding replaces the parameters, so set the "
            "optimizer up before its first step; restore its state afterwards with runtime.load"
        )
