"""The DeepSpeed strategy: ZeRO stages 0-3, with CPU or NVMe offload, on DeepSpeed's engine."""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn
from torch.optim import Optimizer

from switchyard.accelerator import Accelerator
from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError
from switchyard.parallel import ParallelStrategy, StartMethod
from switchyard.precision import Precision
from switchyard_deepspeed import accelerator as ds_accelerator
from switchyard_deepspeed import extensions
from switchyard_deepspeed.config import OffloadDevice, build_config, zero_stage
from switchyard_deepspeed.precision import DeepSpeedPrecision
from switchyard_deepspeed.scheduler import EngineSteppedScheduler

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


class DeepSpeedStrategy(ParallelStrategy):
    """DeepSpeed's engine (``deepspeed.initialize``) in one process per device.

    ``runtime.setup(model, optimizer)`` hands the module and optimizer to ``deepspeed.initialize``
    with the strategy's DeepSpeed config; ``runtime.setup(model)`` lets the engine build the
    optimizer (and learning-rate scheduler) its config defines, and returns
    ``(model, optimizer)``, or ``(model, optimizer, scheduler)`` when the config has a
    ``"scheduler"`` (an :class:`~switchyard_deepspeed.scheduler.EngineSteppedScheduler`, whose
    ``step()`` is refused: the engine steps it). ``runtime.backward(loss)`` is
    ``engine.backward(loss)`` and ``optimizer.step()`` is ``engine.step()``, which also steps the
    config's scheduler (reach it as :meth:`lr_scheduler`) and zeroes the gradients. The optimizer handed back is the torch
    optimizer the engine steps (the user's own, or the one built from the config), so
    ``optimizer.param_groups`` and learning-rate schedulers of the user's work on it; its
    parameters are the engine's float32 (partitioned) master copies.

    The config: ``config=`` is a dict or the path of a JSON file, in DeepSpeed's own format. The
    strategy's arguments and the runtime's precision are written into it; a setting given both
    ways with different values is a :class:`~switchyard_deepspeed.config.ConfigConflictError`
    naming both, raised when the ``Runtime`` is created. Precisions: ``32-true`` (no section),
    ``bf16-mixed`` (``"bf16": {"enabled": true}``: the module's parameters and computation in
    bfloat16, float32 master weights in the optimizer), ``16-mixed`` (``"fp16"`` with dynamic
    loss scaling). DeepSpeed owns the casting and the loss scaling: :meth:`connect_precision`
    replaces switchyard's precision with :class:`DeepSpeedPrecision`, which only converts
    inputs and outputs, so no autocast and no ``GradScaler`` runs beside DeepSpeed's.

    Gradient accumulation, either way: with ``gradient_accumulation_steps=N`` the engine
    accumulates (call ``runtime.backward`` and ``optimizer.step()`` on every micro-batch; the
    loss is divided by N and the optimizer steps every N calls); or, as with every strategy,
    call ``optimizer.step()`` only every N micro-batches, with the others' backward inside
    ``runtime.no_backward_sync(model)``. Under ZeRO 0 and 1 that skips the gradient all-reduce
    (``engine.no_sync()``); ZeRO 2 and 3 reduce-scatter gradients into their shards in every
    backward (DeepSpeed cannot defer it), so no communication is saved there: the context
    marks the backwards inside as not ending an accumulation
    (``engine.set_gradient_accumulation_boundary(False)``), so that the shards add them up
    rather than keep only the last.

    Gradient clipping is the engine's (``gradient_clipping=``, applied in ``optimizer.step()``):
    ``runtime.clip_gradients`` is refused with that advice.

    Processes: the process group is created as every ``ParallelStrategy`` creates it (the
    rendezvous store is kept to name stalled ranks), with the accelerator's backend, and then
    handed to DeepSpeed with ``deepspeed.init_distributed``, which adopts an initialised
    ``torch.distributed`` rather than starting its own; it is destroyed at teardown. DeepSpeed's
    accelerator is set to switchyard's (``DS_ACCELERATOR``, before DeepSpeed is imported), and
    its JIT-compiled ops are cached outside the checkout (:mod:`switchyard_deepspeed.extensions`).

    Checkpoints: ``runtime.save(path, state)`` writes a directory in DeepSpeed's own format
    (``engine.save_checkpoint``: one file per process of the optimizer states under ZeRO, and of
    the parameters too under ZeRO-3) plus switchyard's entries; see
    :mod:`switchyard_deepspeed.checkpoint`. :func:`switchyard_deepspeed.consolidate` turns it into
    one float32 file a plain ``nn.Module`` loads.

    Args:
        start_method: ``"popen"`` (torchrun re-runs the script) or ``"spawn"``/``"fork"``/
            ``"forkserver"`` with ``runtime.launch(fn)``.
        process_group_backend: default: the accelerator's (gloo on CPU).
        timeout: how long collectives wait for a missing peer (see
            :class:`~switchyard.parallel.ParallelStrategy`).
        config: a DeepSpeed config (dict) or the path of a JSON file holding one.
        stage: the ZeRO stage, 0-3; default: the config's, else 2.
        offload_optimizer: keep optimizer states in ``offload_device`` memory and step there
            (use DeepSpeed's CPU Adam, ``deepspeed.ops.adam.DeepSpeedCPUAdam``, or an
            ``"optimizer"`` in the config).
        offload_parameters: keep parameters in ``offload_device`` memory (ZeRO-3 only).
        offload_device: ``"cpu"`` or ``"nvme"`` (with ``nvme_path``; needs libaio).
        nvme_path: the directory NVMe offload swaps into.
        gradient_clipping: clip the gradients' global norm to this value in every step.
        gradient_accumulation_steps: micro-batches the engine accumulates per optimizer step.
        train_micro_batch_size_per_gpu: the batch size of one process's micro-batch (DeepSpeed
            uses it for its throughput log and its own data loader); default 1.
        extensions_dir: where DeepSpeed's JIT-compiled ops are cached; default
            :func:`switchyard_deepspeed.extensions.default_directory`, unless
            ``TORCH_EXTENSIONS_DIR`` is set.
    """

    optimizer_steps_master_copies: ClassVar[bool] = True
    """ZeRO's optimizer steps flat float32 master partitions and copies them back into the
    module's parameters (a stage-0 engine steps the parameters themselves, but this declares
    what the strategy may do)."""

    def __init__(
        self,
        start_method: StartMethod = "popen",
        process_group_backend: str | None = None,
        timeout: timedelta | float | None = None,
        *,
        config: Mapping[str, Any] | str | Path | None = None,
        stage: int | None = None,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        offload_device: OffloadDevice = "cpu",
        nvme_path: str | None = None,
        gradient_clipping: float | None = None,
        gradient_accumulation_steps: int | None = None,
        train_micro_batch_size_per_gpu: int | None = None,
        extensions_dir: str | Path | None = None,
    ) -> None:
        super().__init__(start_method, process_group_backend, timeout)
        self.user_config = config
        """The ``config`` argument as given (a dict, a JSON file's path, or ``None``)."""
        self.stage = stage
        self.offload_optimizer = offload_optimizer
        self.offload_parameters = offload_parameters
        self.offload_device: OffloadDevice = offload_device
        self.nvme_path = nvme_path
        self.gradient_clipping = gradient_clipping
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.train_micro_batch_size_per_gpu = train_micro_batch_size_per_gpu
        self.extensions_dir = extensions_dir
        self.config: dict[str, Any] = {}
        """The DeepSpeed config the engines are created with (built when the strategy is
        bound to the runtime's precision)."""
        self.selected_precision: Precision | None = None
        """The precision the user selected, which DeepSpeed's config then expresses (set when
        the strategy is bound)."""
        self._init_tracking()

    def _init_tracking(self) -> None:
        self._engines: list[DeepSpeedEngine] = []
        # the optimizer handed to the user -> the engine that steps it
        self._optimizer_engines: weakref.WeakKeyDictionary[Optimizer, DeepSpeedEngine] = (
            weakref.WeakKeyDictionary()
        )

    def __getstate__(self) -> dict[str, Any]:
        # spawn pickles the strategy before anything is set up; engines never travel
        state = self.__dict__.copy()
        state.pop("_engines", None)
        state.pop("_optimizer_engines", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_tracking()

    # -- selection ------------------------------------------------------------------------

    def bind(
        self,
        *,
        accelerator: Accelerator,
        precision: Precision,
        environment: ClusterEnvironment,
        devices: Sequence[torch.device],
        num_nodes: int,
    ) -> None:
        """Refuse, before any process starts, an accelerator DeepSpeed has no accelerator for,
        a precision it has no mode for, and a config that conflicts with the arguments."""
        ds_accelerator.deepspeed_name(accelerator)
        super().bind(
            accelerator=accelerator,
            precision=precision,
            environment=environment,
            devices=devices,
            num_nodes=num_nodes,
        )

    def connect_precision(self, precision: Precision) -> Precision:
        """DeepSpeed casts the module and scales the loss itself: the user's precision becomes
        the config's ``bf16``/``fp16`` section, and the runtime gets a
        :class:`DeepSpeedPrecision` that only converts inputs and outputs."""
        self.selected_precision = precision
        self.config, dtype = build_config(
            self.user_config,
            precision=precision,
            stage=self.stage,
            offload_optimizer=self.offload_optimizer,
            offload_parameters=self.offload_parameters,
            offload_device=self.offload_device,
            nvme_path=self.nvme_path,
            gradient_clipping=self.gradient_clipping,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            train_micro_batch_size_per_gpu=self.train_micro_batch_size_per_gpu,
        )
        return DeepSpeedPrecision(precision.name, dtype)

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage the engines run (from the config, once bound)."""
        return zero_stage(self.config)

    # -- processes ------------------------------------------------------------------------

    def setup_environment(self) -> None:
        # both before DeepSpeed is imported: it fixes its accelerator at import, and builds
        # its communication op when it adopts the process group
        extensions.use_cache(self.extensions_dir)
        chosen = ds_accelerator.select(self.accelerator)
        ds_accelerator.check_precision(chosen, self.config)
        super().setup_environment()
        # DeepSpeed reads the ranks from the variables its own launcher and torchrun set; a
        # process switchyard started another way (spawn, a job of one) sets them here
        for variable, value in (
            ("LOCAL_RANK", self.local_rank),
            ("RANK", self.global_rank),
            ("WORLD_SIZE", self.world_size),
        ):
            os.environ.setdefault(variable, str(value))
        import deepspeed

        # adopts the process group created above (DeepSpeed starts none of its own when
        # torch.distributed is initialised)
        deepspeed.init_distributed(
            dist_backend=self.process_group_backend,
            auto_mpi_discovery=False,
            verbose=False,
            timeout=self.timeout,
        )

    def teardown(self) -> None:
        self._engines.clear()
        self._optimizer_engines.clear()
        import sys

        comm = sys.modules.get("deepspeed.comm.comm")
        if comm is not None and comm.is_initialized():
            # through DeepSpeed, which also drops the groups it cached (its clone of the world
            # group, ZeRO's partition groups): left behind, they would be handed to the next
            # runtime's engines in this process, which then fail on a destroyed group
            comm.destroy_process_group()
        super().teardown()
        if comm is not None:
            # DeepSpeed's handle on the destroyed group; a later runtime in this process
            # hands it a new one
            setattr(comm, "cdb", None)  # noqa: B010 - an attribute DeepSpeed's stubs lack

    # -- modules and optimizers -----------------------------------------------------------

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module  # the engine casts the parameters itself, in deepspeed.initialize

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: Sequence[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        """``deepspeed.initialize`` with the module, the optimizer (or the config's) and the
        strategy's config; returns the engine and the torch optimizer it steps."""
        if len(optimizers) > 1:
            raise ValueError(
                f"a DeepSpeed engine trains one module with one optimizer, but runtime.setup got "
                f"{len(optimizers)} optimizers; set up each module with its own optimizer"
            )
        optimizer = optimizers[0] if optimizers else None
        engine = self._initialize(module, optimizer)
        stepped = self._torch_optimizer(engine)
        if stepped is None:
            return engine, []
        self._optimizer_engines[stepped] = engine
        return engine, [stepped]

    def setup_module(self, module: nn.Module) -> nn.Module:
        return self._initialize(module, None)

    def _initialize(self, module: nn.Module, optimizer: Optimizer | None) -> DeepSpeedEngine:
        import deepspeed

        parameters = None
        if optimizer is None:
            parameters = [p for p in module.parameters() if p.requires_grad]
        engine, _, _, _ = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            model_parameters=parameters,
            config=self.config,
            dist_init_required=False,
        )
        self._engines.append(engine)
        return engine

    @staticmethod
    def _torch_optimizer(engine: DeepSpeedEngine) -> Optimizer | None:
        """The torch optimizer inside the engine's optimizer (ZeRO wraps it), or ``None``
        without one."""
        basic = getattr(engine, "basic_optimizer", None)
        if isinstance(basic, Optimizer):
            return basic
        wrapped = engine.optimizer
        while wrapped is not None and not isinstance(wrapped, Optimizer):
            wrapped = getattr(wrapped, "optimizer", None)
        return wrapped

    def engine(self, obj: Any = None) -> DeepSpeedEngine:
        """The engine that trains ``obj`` (a set-up module, its original module, or the
        optimizer ``runtime.setup`` returned); with no argument, the only engine."""
        from switchyard.wrappers import RuntimeModule, RuntimeOptimizer

        if isinstance(obj, RuntimeModule):
            obj = obj._forward_module
        elif isinstance(obj, RuntimeOptimizer):
            obj = obj.optimizer
        if obj is None:
            if len(self._engines) == 1:
                return self._engines[0]
            raise ValueError(
                f"{len(self._engines)} DeepSpeed engines are set up; say which module or "
                "optimizer (runtime.backward(loss, model=model))"
            )
        if isinstance(obj, Optimizer):
            found = self._optimizer_engines.get(obj)
            if found is not None:
                return found
        for engine in self._engines:
            if obj is engine or obj is engine.module:
                return engine
        raise ValueError(
            f"{type(obj).__name__} was not set up by this DeepSpeed strategy; pass what "
            "runtime.setup() returned"
        )

    def lr_scheduler(self, obj: Any = None) -> Any:
        """The learning-rate scheduler the engine of ``obj`` built from its config (``None``
        without one); ``optimizer.step()`` steps it."""
        return self.engine(obj).lr_scheduler

    def optimizer_zero_grad(self, optimizer: Optimizer, set_to_none: bool = True) -> None:
        """``engine.zero_grad()``: the module's gradients. torch's own ``zero_grad`` on the
        optimizer's float32 partitions would drop the gradient buffers an offloaded ZeRO
        optimizer keeps on them between steps."""
        engine = self._optimizer_engines.get(optimizer)
        if engine is None:
            optimizer.zero_grad(set_to_none=set_to_none)
        else:
            engine.zero_grad()

    def engine_lr_schedulers(self, module: nn.Module) -> list[Any]:
        """The config's scheduler, for ``model, optimizer, scheduler = runtime.setup(model)``:
        refusing ``step()``, which the engine does."""
        scheduler = self.engine(module).lr_scheduler
        return [] if scheduler is None else [EngineSteppedScheduler(scheduler)]

    # -- the training step ----------------------------------------------------------------

    def backward(
        self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any
    ) -> None:
        if args or set(kwargs) - {"retain_graph"}:
            raise TypeError(
                "DeepSpeed's engine.backward(loss) takes only retain_graph=...; got "
                f"{', '.join([*map(repr, args), *kwargs])}"
            )
        self.engine(module).backward(tensor, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(
                f"DeepSpeed's engine.step() takes no closure or arguments; got {sorted(kwargs)}"
            )
        self.engine(optimizer).step()
        return None

    def no_backward_sync(
        self, module: nn.Module, enabled: bool
    ) -> contextlib.AbstractContextManager[Any]:
        if not enabled:
            return contextlib.nullcontext()
        engine = self.engine(module)
        if engine.zero_optimization_partition_gradients():
            return _accumulating(engine)
        return engine.no_sync()

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        raise _clipping_refused(f"max_norm={max_norm}")

    def clip_gradients_value(
        self, module: nn.Module, optimizer: Optimizer, clip_val: float
    ) -> None:
        raise _clipping_refused(f"clip_val={clip_val}")

    # -- state dicts ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _gathered(self, module: nn.Module, modifier_rank: int | None) -> Iterator[None]:
        """Under ZeRO-3, the module's full parameters for the block (every process must
        enter); otherwise nothing to gather."""
        if self.zero_stage != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(
            list(module.parameters()), modifier_rank=modifier_rank
        ):
            yield

    def module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The module's full state dict (gathered under ZeRO-3: every process must call it),
        in the engine's dtype, as CPU copies."""
        inner = self._plain_module(module)
        with self._gathered(inner, None):
            return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}

    def load_module_state_dict(
        self, module: nn.Module, state_dict: Mapping[str, Any], strict: bool = True
    ) -> None:
        """Load a full state dict (every process must call it under ZeRO-3). The engine's
        optimizer keeps its float32 master weights: load through ``runtime.load`` of an engine
        checkpoint, or before ``runtime.setup``, to change those."""
        inner = self._plain_module(module)
        with self._gathered(inner, 0):
            inner.load_state_dict(state_dict, strict=strict)

    def _plain_module(self, module: nn.Module) -> nn.Module:
        for engine in self._engines:
            if module is engine:
                return cast(nn.Module, engine.module)
        return module

    def optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        """The torch optimizer's state dict: under ZeRO, this process's shard of the flat
        float32 master weights' states (plain tensors). ``runtime.save`` writes the engine's
        whole optimizer (every process's shard, the loss scaler) instead."""
        if self.zero_stage != 3:
            return optimizer.state_dict()
        # ZeRO-3 keys the states by flat tensors it swaps in and out of param_groups, which
        # Optimizer.state_dict() cannot number: they are numbered in the order they are held
        return {
            "state": {i: dict(value) for i, value in enumerate(optimizer.state.values())},
            "param_groups": [
                {k: v for k, v in group.items() if k != "params"}
                for group in optimizer.param_groups
            ],
        }

    def load_optimizer_state_dict(
        self, optimizer: Optimizer, state_dict: Mapping[str, Any]
    ) -> None:
        if self.zero_stage != 3:
            optimizer.load_state_dict(dict(state_dict))
            return
        states = list(optimizer.state.values())
        saved = state_dict.get("state", {})
        if len(saved) != len(states):
            raise ValueError(
                f"the optimizer state holds {len(saved)} flat tensors' states, this ZeRO-3 "
                f"optimizer {len(states)}; load it in as many processes as saved it"
            )
        for index, target in enumerate(states):
            for key, value in saved[index].items():
                current = target.get(key)
                if isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor):
                    current.copy_(value)
                else:
                    target[key] = value
        for group, values in zip(
            optimizer.param_groups, state_dict.get("param_groups", []), strict=False
        ):
            group.update({k: v for k, v in values.items() if k != "params"})

    # -- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(
        self,
        path: str | Path,
        state: Mapping[str, Any],
        filter: Mapping[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Write ``state`` to the directory ``path``: each engine in DeepSpeed's own format
        (``engine.save_checkpoint``, every process writing its shards), the other entries in one
        file from rank zero; staged and renamed into place as core's directory checkpoints are.
        Every process must call it."""
        from switchyard_deepspeed import checkpoint

        checkpoint.save(self, Path(path), state, filter)

    def load_checkpoint(
        self,
        path: str | Path,
        state: Mapping[str, Any],
        strict: bool = True,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        """Restore ``state`` from a checkpoint this strategy wrote (in the same number of
        processes), or load the modules of any other checkpoint switchyard reads. Every file is
        read with ``weights_only=True`` unless the caller opts out."""
        from switchyard_deepspeed import checkpoint

        return checkpoint.load(self, Path(path), state, strict, weights_only)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stage={self.stage!r}, start_method={self.start_method!r})"


@contextlib.contextmanager
def _accumulating(engine: DeepSpeedEngine) -> Iterator[None]:
    """ZeRO 2 and 3 reduce-scatter gradients in every backward, which DeepSpeed cannot defer.
    Without ``gradient_accumulation_steps`` every backward ends an accumulation, and the
    shards of the next one replace, rather than add to, those of the backwards before it: the
    backwards inside are marked as not ending one."""
    saved = engine._is_gradient_accumulation_boundary
    engine.set_gradient_accumulation_boundary(False)
    try:
        yield
    finally:
        # None is the engine's own counting (gradient_accumulation_steps); the optimizer takes
        # the engine's value at the start of every backward
        engine._is_gradient_accumulation_boundary = saved


def _clipping_refused(given: str) -> SelectionError:
    return SelectionError(
        f"runtime.clip_gradients({given}) is not applied under DeepSpeed: its engine clips the "
        "gradients' global norm itself, inside optimizer.step(). Pass "
        "DeepSpeedStrategy(gradient_clipping=...) (or 'gradient_clipping' in the DeepSpeed "
        "config) and drop the call"
    )
