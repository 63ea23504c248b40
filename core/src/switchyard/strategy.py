"""The Strategy interface: how a model, its optimizers and its data are spread over devices."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from switchyard import seed as _seed
from switchyard.accelerator import Accelerator
from switchyard.environment import ClusterEnvironment
from switchyard.errors import CheckpointError
from switchyard.launcher import Launcher
from switchyard.precision import Precision

T = TypeVar("T")

ReduceOp = str
"""``"sum"``, ``"mean"``, ``"max"``, ``"min"`` or ``"product"``."""

REDUCE_OPS: tuple[ReduceOp, ...] = ("sum", "mean", "max", "min", "product")
"""The reductions every strategy's :meth:`Strategy.all_reduce` supports, spelled lower-case:
``runtime.all_reduce`` passes the strategy one of these, through :func:`normalize_reduce_op`."""


def normalize_reduce_op(op: str) -> ReduceOp:
    """``op`` as :data:`REDUCE_OPS` spells it (case does not matter), or a ``ValueError`` that
    says what was asked and what is valid."""
    normalized = op.lower() if isinstance(op, str) else op
    if normalized not in REDUCE_OPS:
        valid = ", ".join(repr(name) for name in REDUCE_OPS)
        raise ValueError(f"all_reduce op={op!r} is not one of {valid} (in any case)")
    return normalized


def filter_state(
    key: str, value: Any, filter: Mapping[str, Callable[[str, Any], bool]] | None
) -> Any:
    """Keep the items of the state dict ``value`` that ``filter[key]`` accepts (``runtime.save``'s
    ``filter`` argument); anything else is returned unchanged."""
    if filter is not None and key in filter and isinstance(value, dict):
        return {k: v for k, v in value.items() if filter[key](k, v)}
    return value


class Strategy(ABC):
    """Base class of strategies; holds the accelerator, precision and environment it runs with.

    Selection constructs the strategy from its entry (or takes the user's instance) and calls
    :meth:`bind`. In every process, :meth:`setup_environment` then runs once, after any launch.
    Defaults here are those of one process driving one device; a distributed strategy overrides
    :attr:`launcher`, :meth:`setup_environment`, the collectives and :meth:`setup_module`.

    The strategy owns the training step. The runtime never applies the user's precision itself:
    it converts modules with :meth:`convert_module`, runs forward under what
    ``strategy.precision`` (the precision :meth:`connect_precision` returned) provides, and sends
    ``backward`` and ``optimizer.step()`` through :meth:`backward` and :meth:`optimizer_step`.
    An engine that owns mixed precision and loss scaling (DeepSpeed) replaces the precision in
    :meth:`connect_precision` and those two methods; one that builds optimizers from its own
    configuration returns them from :meth:`setup_module_and_optimizers`.
    """

    accelerator: Accelerator
    """The accelerator selection chose; set by :meth:`bind`."""
    precision: Precision
    """The precision this strategy runs with (what :meth:`connect_precision` returned); set by
    :meth:`bind`."""
    environment: ClusterEnvironment
    """Where ranks, world size and the rendezvous address come from; set by :meth:`bind`."""
    devices: list[torch.device]
    """The devices of this node, one per local process (one in total for single-device)."""
    num_nodes: int = 1
    """Number of nodes the job runs on; set by :meth:`bind`."""

    optimizer_steps_master_copies: ClassVar[bool] = False
    """Whether the optimizer ``runtime.setup`` returns steps copies of the parameters the
    strategy keeps itself (ZeRO's flat float32 master partitions) and then writes them back
    into the module's parameters, rather than stepping the module's parameters. Default
    ``False``: in ``32-true`` the user's optimizer holds exactly the set-up module's
    parameters, which the conformance kit checks; a strategy declaring ``True`` is checked
    instead for what must still hold: no optimizer holds parameters the module no longer
    computes with, and every parameter of the module changes when the optimizer steps."""

    forward_is_collective: ClassVar[bool] = True
    """Whether the forward of a module this strategy set up may run a collective (FSDP
    all-gathers each sharded module's parameters; DDP broadcasts buffers), so that a process
    running one forward fewer than the others leaves them waiting for ever. Consulted only with
    several processes, by ``runtime.setup_dataloaders(loader, evaluation=True)``: where the
    evaluation set cannot be split into the same number of batches for every process without
    repeating a sample (fewer samples than processes, batches of one), ``True`` makes that a
    clear error at setup, and ``False`` lets the processes run different numbers of batches.
    Default ``True``, the safe answer; declare ``False`` only for a strategy whose forward never
    communicates."""

    def bind(
        self,
        *,
        accelerator: Accelerator,
        precision: Precision,
        environment: ClusterEnvironment,
        devices: Sequence[torch.device],
        num_nodes: int,
    ) -> None:
        """Attach the pieces selection chose. Called once, before any process starts and before
        :meth:`setup_environment`; raise :class:`~switchyard.SelectionError` here for a
        combination this strategy cannot run (it reaches the user before anything starts)."""
        self.accelerator = accelerator
        self.environment = environment
        self.devices = list(devices)
        self.num_nodes = num_nodes
        self.precision = self.connect_precision(precision)

    def connect_precision(self, precision: Precision) -> Precision:
        """Return the precision this strategy runs with, given the one the user selected.
        Called by :meth:`bind`, once the accelerator and devices are known.

        Default: the user's precision, unchanged. A strategy adapts it here (FSDP makes a
        gradient scaler agree across shards through :meth:`Precision.set_scaler_factory`) or
        replaces it with its own (an engine that casts parameters and scales the loss itself
        returns a precision whose forward only converts inputs). ``runtime.precision`` is what
        this returns.
        """
        return precision

    # -- processes ------------------------------------------------------------------------

    @property
    def launcher(self) -> Launcher | None:
        """The launcher that starts this strategy's processes, or ``None`` for one process."""
        return None

    @property
    def world_size(self) -> int:
        """Number of processes in the job."""
        return 1

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes of the job, ``0`` to ``world_size - 1``."""
        return 0

    @property
    def local_rank(self) -> int:
        """This process's rank among the processes of its node (which local device it drives)."""
        return 0

    @property
    def node_rank(self) -> int:
        """The rank of this process's node among the job's nodes."""
        return 0

    @property
    def is_global_zero(self) -> bool:
        """Whether this is the process of global rank zero, the one that logs and saves."""
        return self.global_rank == 0

    @property
    @abstractmethod
    def root_device(self) -> torch.device:
        """The device this process computes on."""

    def setup_environment(self) -> None:
        """Prepare this process: select its device, create the process group. Called once per
        process after launch, before anything is set up."""
        self.accelerator.setup_device(self.root_device)
        _seed.track_accelerator(self.accelerator)
        self.precision.bind(self.root_device)

    def teardown(self) -> None:
        """Release what :meth:`setup_environment` created (destroy the process group)."""
        self.precision.teardown()
        self.accelerator.teardown()

    # -- modules and optimizers -----------------------------------------------------------

    def module_init_context(self, empty_init: bool | None = None) -> contextlib.ExitStack:
        """A context under which new modules are created on the device in the right dtype.

        ``empty_init=True`` allows skipping parameter initialization (weights will be loaded);
        strategies that shard may then create modules on the meta device. Default: what
        :meth:`tensor_init_context` does.
        """
        return self.tensor_init_context()

    def tensor_init_context(self) -> contextlib.ExitStack:
        """A context under which new tensors are created on the device in the precision's
        parameter dtype (``runtime.init_tensor()``)."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.root_device)
        stack.enter_context(self.precision.module_init_context())
        return stack

    def convert_module(self, module: nn.Module) -> nn.Module:
        """Convert a module's parameters for the precision, at setup, before
        :meth:`module_to_device`. Default: ``self.precision.convert_module(module)``."""
        return self.precision.convert_module(module)

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: Sequence[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        """Prepare a module and its optimizers together; return the module to run and the
        optimizers to step. Strategies that must see both at once (DeepSpeed) override this.

        ``optimizers`` may be empty (``runtime.setup(model)``): an engine that builds its
        optimizers from its own configuration returns them here, and the user receives them.
        When this is called, the optimizers already point at the parameters the module holds
        on the device; a strategy that replaces parameters (sharding) must re-point them
        (:class:`switchyard.parameters.ParameterNames` does it by name). Default: each set up
        on its own."""
        module = self.setup_module(module)
        return module, [self.setup_optimizer(optimizer) for optimizer in optimizers]

    def engine_lr_schedulers(self, module: nn.Module) -> list[Any]:
        """The learning-rate schedulers an engine built from its own configuration for
        ``module`` (the module :meth:`setup_module_and_optimizers` returned), which it steps
        itself. ``runtime.setup(model)`` hands them to the user after the optimizers it built
        (``model, optimizer, scheduler = runtime.setup(model)``); they are never returned when
        the user passed optimizers. Default: none."""
        return []

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Wrap a module for this strategy (DDP, sharding). The runtime has already moved it to
        :attr:`root_device` with :meth:`module_to_device`, unless the user passed
        ``move_to_device=False``."""
        return module

    def module_to_device(self, module: nn.Module) -> nn.Module:
        """Move a module to this process's device, before :meth:`setup_module`."""
        return module.to(self.root_device)

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        """Prepare an optimizer whose parameters already live on the device."""
        return optimizer

    def process_dataloader(self, dataloader: DataLoader[Any]) -> DataLoader[Any]:
        """Adapt a data loader (e.g. hand it to an engine's own loader). Default: unchanged."""
        return dataloader

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """``num_replicas``/``rank`` for a ``DistributedSampler``, or ``None`` when data need not
        be split between processes."""
        return None

    # -- the training step ----------------------------------------------------------------

    def backward(
        self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kw: Any
    ) -> None:
        """``runtime.backward(loss)``: backward through the precision (its ``pre_backward``,
        for instance scaling the loss, then ``backward`` and ``post_backward``). ``module`` is
        the set-up module the loss came from, when known. Override where the engine runs
        backward itself."""
        tensor = self.precision.pre_backward(tensor, module)
        self.precision.backward(tensor, module, *args, **kw)
        self.precision.post_backward(tensor, module)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        """``optimizer.step()`` of an optimizer ``runtime.setup`` returned: through the precision,
        which steps a gradient scaler where it has one; returns what the step returns."""
        return self.precision.optimizer_step(optimizer, **kwargs)

    def optimizer_zero_grad(self, optimizer: Optimizer, set_to_none: bool = True) -> None:
        """``optimizer.zero_grad()`` of an optimizer ``runtime.setup`` returned. Override it
        where the engine owns the gradients the optimizer's parameters hold (DeepSpeed's
        offloaded optimizer keeps its gradient buffers on the float32 partitions it steps, and
        torch's ``zero_grad(set_to_none=True)`` would drop them). Not overridden, the user's
        optimizer's own ``zero_grad`` runs with no call in between."""
        optimizer.zero_grad(set_to_none=set_to_none)

    def no_backward_sync(
        self, module: nn.Module, enabled: bool
    ) -> contextlib.AbstractContextManager[Any]:
        """Skip gradient synchronization in backward while the context is active (gradient
        accumulation). Default: nothing to skip."""
        return contextlib.nullcontext()

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        """``runtime.clip_gradients(max_norm=...)``: unscale the gradients (mixed precision),
        then clip their total norm like ``torch.nn.utils.clip_grad_norm_``; returns the norm
        before clipping. A strategy whose gradients are sharded computes the norm over every
        shard."""
        self.precision.unscale_gradients(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        return torch.nn.utils.clip_grad_norm_(
            parameters, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )

    def clip_gradients_value(
        self, module: nn.Module, optimizer: Optimizer, clip_val: float
    ) -> None:
        """``runtime.clip_gradients(clip_val=...)``: unscale the gradients, then clamp each
        element to ``[-clip_val, clip_val]`` like ``torch.nn.utils.clip_grad_value_``."""
        self.precision.unscale_gradients(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_value_(parameters, clip_val)

    # -- collectives (identity on one process) --------------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "mean") -> torch.Tensor:
        """Reduce ``tensor`` over every process with ``op`` (``"mean"``, ``"sum"``, ``"max"``,
        ``"min"``) and return the result, the same in every process. Default (one process): the
        tensor itself."""
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Gather ``tensor`` from every process, stacked along a new first dimension."""
        return tensor.unsqueeze(0)

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Send the picklable ``obj`` of process ``src`` to every process; each returns it.
        Default (one process): ``obj`` itself."""
        return obj

    def barrier(self, name: str | None = None) -> None:
        """Wait until every process has reached this point; ``name`` identifies the barrier where
        the backend reports it. Default (one process): nothing to wait for."""

    # -- checkpoints ----------------------------------------------------------------------

    def module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The state dict of a set-up module as a checkpoint stores it. Default: ``state_dict()``;
        a strategy that shards or wraps the module returns the user's keys (full, or this
        process's shards where the strategy saves sharded checkpoints)."""
        return module.state_dict()

    def load_module_state_dict(
        self, module: nn.Module, state_dict: Mapping[str, Any], strict: bool = True
    ) -> None:
        """Load what :meth:`module_state_dict` returned into a set-up module; ``strict`` as
        ``nn.Module.load_state_dict`` has it."""
        module.load_state_dict(state_dict, strict=strict)

    def optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        """The state dict of an optimizer ``runtime.setup`` returned, as a checkpoint stores it.
        Default: ``optimizer.state_dict()``."""
        return optimizer.state_dict()

    def load_optimizer_state_dict(
        self, optimizer: Optimizer, state_dict: Mapping[str, Any]
    ) -> None:
        """Load what :meth:`optimizer_state_dict` returned into an optimizer ``runtime.setup``
        returned."""
        optimizer.load_state_dict(dict(state_dict))

    def save_checkpoint(
        self,
        path: str | Path,
        state: Mapping[str, Any],
        filter: Mapping[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Write ``state`` (modules and optimizers replaced by their state dicts) to ``path``,
        atomically, from global rank zero only. Every process must call it, and all of them
        raise the same :class:`~switchyard.errors.CheckpointError` if the save fails.

        A value holding sharded tensors (``DTensor``) is refused, naming it: one process's file
        would hold only that process's shards. Strategies that shard override this method and
        save such values completely."""
        from switchyard import checkpoint  # its safe unpickler is not needed to build a Runtime

        savable = self._to_savable(state, filter)
        sharded = checkpoint.sharded_tensor_entries(savable)
        if sharded:
            keys, tensor = sharded[0]
            raise CheckpointError(
                f"cannot save state{keys} to {str(path)!r}: it is "
                f"{checkpoint.describe_sharded_tensor(tensor)}, and {type(self).__name__} "
                "writes one file from global rank zero, which would hold only that process's "
                f"shard ({len(sharded)} such value(s) in the state). Save the module or "
                "optimizer itself with a strategy that shards (strategy='fsdp' writes every "
                "process's shards), or gather the value on every process first "
                "(tensor.full_tensor())."
            )
        failure: Exception | None = None
        if self.is_global_zero:
            try:
                checkpoint.atomic_save(savable, path)
            except Exception as error:
                failure = error
        self._agree_on_save(path, failure)

    def _agree_on_save(self, path: str | Path, failure: Exception | None) -> None:
        """Raise ``failure`` (rank zero's) on rank zero and a :class:`CheckpointError` saying
        so on the others; otherwise return once every process got here (it is a barrier)."""
        message = None if failure is None else str(failure)
        if self.world_size > 1:
            message = self.broadcast(message, src=0)
        if failure is not None:
            raise failure
        if message is not None:
            raise CheckpointError(
                f"global rank 0 could not save the checkpoint {str(path)!r}: {message}"
            )

    def load_checkpoint(
        self,
        path: str | Path,
        state: Mapping[str, Any],
        strict: bool = True,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        """Restore modules, optimizers and objects with ``load_state_dict`` in ``state`` in place
        from ``path``; return the checkpoint's entries that ``state`` did not ask for.

        ``path`` is a single file, or a sharded checkpoint directory (written by a strategy
        that shards, or by ``torch.distributed.checkpoint``), which every process reads whole,
        as full tensors, without the strategy that wrote it. A directory checkpoint that a save
        killed between its two renames left beside ``path`` is put back first."""
        from switchyard import checkpoint

        path = checkpoint.resolve(Path(path))
        loaded = checkpoint.load(path, weights_only=weights_only)
        return self._restore(loaded, state, strict)

    def _to_savable(
        self,
        state: Mapping[str, Any],
        filter: Mapping[str, Callable[[str, Any], bool]] | None,
        module_state: Callable[[nn.Module], dict[str, Any]] | None = None,
        optimizer_state: Callable[[Optimizer], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """``state`` with modules, optimizers and stateful objects replaced by their state dicts
        (through ``module_state``/``optimizer_state``, default this strategy's own), filtered."""
        module_state = module_state or self.module_state_dict
        optimizer_state = optimizer_state or self.optimizer_state_dict
        out: dict[str, Any] = {}
        for key, obj in state.items():
            if isinstance(obj, nn.Module):
                value: Any = module_state(obj)
            elif isinstance(obj, Optimizer):
                value = optimizer_state(obj)
            elif hasattr(obj, "state_dict") and callable(obj.state_dict):
                value = obj.state_dict()
            else:
                value = obj
            out[key] = filter_state(key, value, filter)
        return out

    def _restore(
        self, loaded: Mapping[str, Any], state: Mapping[str, Any], strict: bool
    ) -> dict[str, Any]:
        missing = [key for key in state if key not in loaded]
        if missing and strict:
            raise KeyError(
                f"the checkpoint has no entry {missing[0]!r}; it holds {sorted(loaded)}. "
                "Pass strict=False to load what is there."
            )
        for key, obj in state.items():
            if key not in loaded:
                continue
            if isinstance(obj, nn.Module):
                self.load_module_state_dict(obj, loaded[key], strict=strict)
            elif isinstance(obj, Optimizer):
                self.load_optimizer_state_dict(obj, loaded[key])
            elif hasattr(obj, "load_state_dict") and callable(obj.load_state_dict):
                obj.load_state_dict(loaded[key])
            elif isinstance(state, MutableMapping):
                # plain values (step counters, config) are replaced in the caller's dict
                state[key] = loaded[key]
        return {key: value for key, value in loaded.items() if key not in state}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
