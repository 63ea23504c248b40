"""The Runtime: the setup API a training script calls."""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import os
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader

from switchyard import seed as _seed
from switchyard.accelerator import Accelerator, DevicesArg
from switchyard.environment import ClusterEnvironment
from switchyard.errors import ArgumentError, SelectionError, SwitchyardError
from switchyard.parameters import ParameterNames
from switchyard.precision import Precision, overrides
from switchyard.registry import PluginHookError, PluginRegistry, block_hint, default_registry
from switchyard.selection import Plan, select
from switchyard.strategy import ReduceOp, Strategy, normalize_reduce_op
from switchyard.wrappers import (
    RuntimeDataLoader,
    RuntimeModule,
    RuntimeOptimizer,
    move_to_device,
)

if TYPE_CHECKING:
    from switchyard.loggers import Logger

T = TypeVar("T")

_NO_CONTEXT: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
"""What ``autocast`` and ``no_backward_sync`` return where there is nothing to do: a
``nullcontext`` keeps no state, so one serves every step (and nested uses)."""


@dataclass
class SetupResult:
    """What ``switchyard_post_setup`` hooks may inspect and replace.

    Attributes:
        module: the module as the strategy set it up (moved, wrapped or sharded); a hook may
            replace it, and ``runtime.setup`` then wraps what it holds.
        optimizers: the optimizers set up with it, in the order given (a hook may replace them).
        original_module: the module the user passed to ``setup``.
    """

    module: nn.Module
    optimizers: list[Optimizer] = field(default_factory=list)
    original_module: nn.Module | None = None


class Runtime:
    """Runs a PyTorch training script on the chosen accelerator, strategy and precision.

    Every argument left as ``None`` is taken from ``switchyard run`` (through ``SWITCHYARD_*``
    variables) when the script was started that way, and otherwise defaults to ``"auto"``
    (``devices``, ``accelerator``, ``strategy``, ``environment``), ``1`` (``num_nodes``) or
    ``"32-true"`` (``precision``).

    Args:
        accelerator: ``"cpu"``, ``"cuda"``, ``"xla"``..., ``"auto"`` or an ``Accelerator``.
        strategy: ``"single_device"``, ``"ddp"``, ``"fsdp"``..., ``"auto"`` or a ``Strategy``.
        devices: how many devices per node (``2``, ``-1`` for all, ``"auto"``) or which
            (``[0, 2]``, ``"0,2"``).
        num_nodes: how many machines take part.
        precision: ``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``... or a ``Precision``.
        plugins: plugin modules or objects to register besides the installed ones; ``"no:NAME"``
            to block an installed plugin; or ``Accelerator``/``Strategy``/``Precision``/
            ``ClusterEnvironment`` instances, used as if passed to their own argument.
        environment: a cluster environment name, ``"auto"`` (detect) or an instance.
        timeout: how long every collective, the creation of the process group and torchrun's
            rendezvous wait for a missing peer, in seconds or as a ``timedelta`` (above 0, at
            most 7 days); default 10 minutes (``switchyard.parallel.DEFAULT_TIMEOUT``), or
            ``switchyard run --timeout``. When it runs out, the job ends with a non-zero status
            and the ranks that never reached the collective are named.
        loggers: where :meth:`log` and :meth:`log_dict` send metrics: a logger name
            (``"csv"``, ``"tensorboard"``, or one a plugin registers, ``switchyard plugins``
            lists them), a :class:`~switchyard.Logger` instance, or a list of either. Named
            loggers write under ``./logs``; create the instance for other arguments
            (``CSVLogger(root_dir="runs")``).
        callbacks: an object, or a list of objects, whose methods :meth:`call` calls by name.

    Example::

        runtime = Runtime(accelerator="auto", devices=1, precision="bf16-mixed")
        runtime.launch()
        model, optimizer = runtime.setup(model, optimizer)
        loader = runtime.setup_dataloaders(loader)
        for x, y in loader:
            loss = loss_fn(model(x), y)
            runtime.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
    """

    def __init__(
        self,
        accelerator: str | Accelerator | None = None,
        strategy: str | Strategy | None = None,
        devices: DevicesArg | None = None,
        num_nodes: int | None = None,
        precision: str | int | Precision | None = None,
        plugins: Sequence[object] | None = None,
        environment: str | ClusterEnvironment | None = None,
        timeout: float | timedelta | None = None,
        loggers: str | Logger | Sequence[str | Logger] | None = None,
        callbacks: Any = None,
    ) -> None:
        # before anything is discovered or selected: a bad timeout is the caller's mistake
        chosen_timeout = _timeout_argument(timeout)
        hook_plugins: list[object] = []
        for plugin in _plugins_list(plugins):
            if isinstance(plugin, Accelerator):
                accelerator = _only_once("accelerator", accelerator, plugin)
            elif isinstance(plugin, Strategy):
                strategy = _only_once("strategy", strategy, plugin)
            elif isinstance(plugin, Precision):
                precision = _only_once("precision", precision, plugin)
            elif isinstance(plugin, ClusterEnvironment):
                environment = _only_once("environment", environment, plugin)
            else:
                hook_plugins.append(plugin)
        self._hook_plugins = hook_plugins
        self.registry: PluginRegistry = (
            PluginRegistry(hook_plugins) if hook_plugins else default_registry()
        )
        """The plugins this runtime selected from and whose lifecycle hooks it calls: the
        installed ones, plus the ``plugins=`` given (then in a registry of its own)."""
        self.plan: Plan = select(
            self.registry,
            accelerator=accelerator,
            strategy=strategy,
            devices=devices,
            num_nodes=num_nodes,
            precision=precision,
            environment=environment,
        )
        """What selection chose: the accelerator, strategy, precision, environment, devices
        and the names they were chosen by (``plan.names``)."""
        if chosen_timeout is not None:
            _apply_timeout(self.plan, *chosen_timeout)
        self._launched = False
        self._torn_down = False
        self._failed = False
        self._modules: list[RuntimeModule] = []
        # one per set-up module: lets setup_optimizers re-point optimizers created before it
        self._parameter_names: list[ParameterNames] = []
        # their modules are imported only when asked for: a Runtime() without them stays cheap
        self._loggers: list[Logger] = []
        if loggers is not None:
            from switchyard.loggers import create_loggers

            self._loggers = create_loggers(self.registry, loggers)
        self._callbacks: list[Any] = []
        if callbacks is not None:
            from switchyard.callbacks import check_callbacks

            self._callbacks = check_callbacks(callbacks)
        self._warned_no_logger = False

    # -- what was chosen ------------------------------------------------------------------

    @property
    def accelerator(self) -> Accelerator:
        """The accelerator selection chose (an instance, whatever name was asked for)."""
        return self.plan.accelerator

    @property
    def strategy(self) -> Strategy:
        """The strategy selection chose, bound to the accelerator, precision and devices."""
        return self.plan.strategy

    @property
    def precision(self) -> Precision:
        """The precision the strategy runs with (``Strategy.connect_precision`` may have
        adapted or replaced the one selected)."""
        return self.strategy.precision

    @property
    def environment(self) -> ClusterEnvironment:
        """The cluster environment detected or given: where ranks and the rendezvous come
        from."""
        return self.plan.environment

    @property
    def device(self) -> torch.device:
        """The device this process computes on."""
        return self.strategy.root_device

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes of the job, ``0`` to ``world_size - 1``."""
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        """This process's rank on its node (which of the node's devices it drives)."""
        return self.strategy.local_rank

    @property
    def node_rank(self) -> int:
        """The rank of this process's node among the job's nodes."""
        return self.strategy.node_rank

    @property
    def world_size(self) -> int:
        """Number of processes in the job."""
        return self.strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        """Whether this is the process of global rank zero: the one that should print, log
        and write files."""
        return self.strategy.is_global_zero

    def __repr__(self) -> str:
        names = self.plan.names
        return (
            f"Runtime(accelerator={names['accelerator']!r}, strategy={names['strategy']!r}, "
            f"devices={list(self.plan.device_indices)}, num_nodes={self.plan.num_nodes}, "
            f"precision={names['precision']!r})"
        )

    # -- processes ------------------------------------------------------------------------

    def launch(
        self, function: Callable[..., T] | None = None, *args: Any, **kwargs: Any
    ) -> T | None:
        """Start the processes the strategy needs and prepare this one.

        Without ``function`` (the usual four-line change) the script continues in every process
        after this call. With a function, ``function(runtime, *args, **kwargs)`` runs in every
        process and rank zero's result is returned; strategies that start processes with
        ``torch.multiprocessing`` (``ddp_spawn``) need this form.
        """
        if self._launched:
            raise RuntimeError("runtime.launch() was already called; call it once per Runtime")
        self._launched = True
        # a scheduler that started the processes leaves nothing to launch (nor to ask of one)
        external = self.environment.creates_processes_externally
        launcher = None if external else self.strategy.launcher
        if launcher is not None:
            if function is None and launcher.requires_function:
                raise RuntimeError(
                    f"strategy {self.plan.names['strategy']!r} starts its processes with "
                    "torch.multiprocessing and needs the function to run in them: "
                    "runtime.launch(main), where main(runtime) holds the training code"
                )
            if function is None:
                launcher.launch(None)
                self._setup_process()
                return None
            return launcher.launch(
                functools.partial(_run_in_process, self, function), *args, **kwargs
            )
        self._setup_process()
        if function is None:
            return None
        try:
            return function(self, *args, **kwargs)
        except BaseException:
            self._failed = True
            raise
        finally:
            self.teardown()

    def _setup_process(self) -> None:
        self.strategy.setup_environment()
        atexit.register(self._teardown_at_exit)
        if self.world_size > 1:
            _name_rank_in_tracebacks(self)
        # each plugin on its own: the first that raises stops the start, names the plugin,
        # and the runtime is torn down (the other plugins' teardown hooks included) so that no
        # half-started run is left behind
        try:
            self.registry.call_lifecycle_hook(
                "switchyard_runtime_started",
                runtime=self,
                consequence="runtime.launch() stopped and the runtime was torn down.",
            )
        except PluginHookError:
            self._failed = True
            self.teardown()
            raise

    def __getstate__(self) -> dict[str, Any]:
        # for launch(fn) with spawn: pluggy's manager and plugin modules do not pickle, so
        # modules travel by name and the registry is rebuilt in the new process
        state = self.__dict__.copy()
        state["registry"] = None
        state["_hook_plugins"] = [
            ("module", p.__name__) if isinstance(p, types.ModuleType) else p
            for p in self._hook_plugins
        ]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        plugins = [
            importlib.import_module(p[1]) if isinstance(p, tuple) and p[:1] == ("module",) else p
            for p in state.pop("_hook_plugins")
        ]
        self.__dict__.update(state)
        self._hook_plugins = plugins
        self.registry = PluginRegistry(plugins) if plugins else default_registry()

    def _ensure_launched(self) -> None:
        if self._launched:
            return
        if self.plan.world_size > 1 and not self.environment.creates_processes_externally:
            raise RuntimeError(
                f"this runtime runs {self.plan.world_size} processes; call runtime.launch() "
                "before setting anything up, so that they are started"
            )
        self._launched = True
        self._setup_process()

    def teardown(self) -> None:
        """End the run in this process: plugin teardown hooks, then the strategy's (which
        destroys the process group). Called automatically at exit; safe to call twice."""
        if self._torn_down or not self._launched:
            return
        self._torn_down = True
        atexit.unregister(self._teardown_at_exit)
        stalled: str | None = None
        if not self._failed and self.world_size > 1:
            # every process reaches the end before any tears its process group down, so no
            # process's exit races the last messages of a peer (gloo aborts or hangs then)
            try:
                self.strategy.barrier("teardown")
            except Exception as error:
                stalled = _explain(self, error, "the end-of-run barrier")
                if stalled is None:
                    # a peer ended without reaching it (it failed; its own report says why):
                    # this process's run is complete, so tear down and let the launcher report
                    # the peer
                    warnings.warn(
                        f"rank {self.global_rank}: not every process reached the end of the "
                        f"run, tearing down without them ({type(error).__name__}: {error})",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                else:
                    # peers still running, stuck: this process fails so that the launcher ends
                    # the job instead of waiting for them for ever (raised below)
                    print(f"switchyard: {stalled}", file=sys.stderr, flush=True)
                    self._failed = True
        self._finalize_loggers()
        try:
            # each plugin on its own, last registered first: one failing must not stop the rest
            failures = self.registry.call_lifecycle_hook(
                "switchyard_runtime_teardown", stop=False, runtime=self
            )
            for failure in failures:
                warnings.warn(
                    f"plugin {failure.plugin.describe()} failed in switchyard_runtime_teardown: "
                    f"{failure.error}; the other plugins and the strategy were torn down. Fix or "
                    f"update the plugin, or stop it from loading: {block_hint(failure.plugin)}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        finally:
            self.strategy.teardown()
        if stalled is not None:
            global _teardown_timed_out
            _teardown_timed_out = True
            raise SwitchyardError(stalled)

    def _teardown_at_exit(self) -> None:
        # Only the teardown: the process then ends as its launcher has it. The workers of
        # switchyard's own torchrun launcher run the script through switchyard.launchers.worker,
        # which ends them with os._exit once the atexit handlers (this one, the user's, logging's)
        # have run, before the interpreter's finalization, where gloo's leftover threads can
        # abort the process. Under torchrun or srun started by the user the interpreter exits
        # normally, as a raw PyTorch job does.
        if _exit_failed or getattr(sys, "last_value", None) is not None:
            # the interpreter sets sys.last_value for an uncaught exception before the atexit
            # handlers run: the run failed, and the loggers are told so
            self._failed = True
        try:
            self.teardown()
        except SwitchyardError:
            # peers never reached the end of the run (already reported): under switchyard's
            # launcher the worker entry point ends this process with status 1; under one the
            # user started, end it here, or its launcher would wait for the stuck peers forever
            if not os.environ.get(_SUPERVISOR_VARIABLE):
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)

    # -- setup ----------------------------------------------------------------------------

    @overload
    def setup(self, module: nn.Module, *, move_to_device: bool = True) -> RuntimeModule: ...

    @overload
    def setup(
        self, module: nn.Module, *optimizers: Optimizer, move_to_device: bool = True
    ) -> tuple[Any, ...]: ...

    def setup(self, module: nn.Module, *optimizers: Optimizer, move_to_device: bool = True) -> Any:
        """Prepare a module and its optimizers: the strategy converts the module for the
        precision, moves it to the device and wraps it (DDP, sharding). Returns the wrapped
        module, or ``(module, *optimizers)``.

        Optimizers may be created before this call, from the module's parameters: afterwards
        they step the parameters the module holds on the device, even where moving or sharding
        created new ``Parameter`` objects. With a strategy whose engine builds the optimizers
        from its own configuration, ``model, optimizer = runtime.setup(model)`` returns them,
        followed by the learning-rate schedulers the engine built and steps itself, if any
        (``model, optimizer, scheduler = runtime.setup(model)``).
        """
        wrapped, prepared, schedulers = self._setup(module, optimizers, move_to_device)
        if not prepared:
            return wrapped
        return (wrapped, *prepared, *schedulers)

    def _setup(
        self, module: nn.Module, optimizers: Sequence[Optimizer], move_to_device: bool
    ) -> tuple[RuntimeModule, list[RuntimeOptimizer], list[Any]]:
        self._ensure_launched()
        _check_not_set_up(module)
        for optimizer in optimizers:
            _check_optimizer(optimizer)
        strategy = self.strategy
        original = module
        names = ParameterNames(original)
        module = strategy.convert_module(module)
        if move_to_device:
            module = strategy.module_to_device(module)
        # the strategy gets optimizers that agree with the module it is given ...
        for optimizer in optimizers:
            names.repoint(optimizer, original)
        names.record(original)
        module, prepared = strategy.setup_module_and_optimizers(module, list(optimizers))
        # ... and whatever it replaced while wrapping, the user's optimizers follow
        for optimizer in prepared:
            names.repoint(optimizer, original)
        result = SetupResult(module=module, optimizers=list(prepared), original_module=original)
        # each plugin on its own; the first that raises stops setup: no module is returned, so
        # nobody trains one that only some plugins prepared
        self.registry.call_lifecycle_hook(
            "switchyard_post_setup",
            runtime=self,
            setup=result,
            consequence=(
                "runtime.setup() stopped and returned nothing: the module the strategy prepared "
                "was handed to only some plugins; create the module (and its optimizers) again "
                "before calling setup() once more."
            ),
        )
        self._parameter_names.append(names)
        wrapped = RuntimeModule(result.module, strategy.precision, original)
        self._modules.append(wrapped)
        # schedulers only come with optimizers the engine built: the user's own optimizers
        # have the user's own schedulers
        schedulers = (
            strategy.engine_lr_schedulers(result.module)
            if result.optimizers and not optimizers
            else []
        )
        return wrapped, [RuntimeOptimizer(o, strategy) for o in result.optimizers], schedulers

    def setup_module(self, module: nn.Module, move_to_device: bool = True) -> RuntimeModule:
        """Prepare a module on its own (for instance one that has no optimizer, or whose
        optimizers are set up later with :meth:`setup_optimizers`)."""
        wrapped, prepared, _ = self._setup(module, (), move_to_device)
        if prepared:
            raise RuntimeError(
                f"strategy {self.plan.names['strategy']!r} built {len(prepared)} optimizer(s) "
                "for this module from its own configuration; use "
                "'model, optimizer = runtime.setup(model)' to receive them"
            )
        return wrapped

    def setup_optimizers(self, *optimizers: Optimizer) -> Any:
        """Prepare optimizers whose module was set up on its own, with :meth:`setup_module`.
        Returns one optimizer, or a tuple of them."""
        self._ensure_launched()
        for optimizer in optimizers:
            _check_optimizer(optimizer)
            for names in self._parameter_names:
                names.repoint(optimizer)
        prepared = [
            RuntimeOptimizer(self.strategy.setup_optimizer(o), self.strategy) for o in optimizers
        ]
        return prepared[0] if len(prepared) == 1 else tuple(prepared)

    def setup_dataloaders(
        self,
        *dataloaders: DataLoader[Any],
        use_distributed_sampler: bool = True,
        move_to_device: bool = True,
        evaluation: bool = False,
    ) -> Any:
        """Prepare data loaders: a ``DistributedSampler`` when the strategy splits data between
        processes (unless ``use_distributed_sampler=False``), batches moved to the device
        (unless ``move_to_device=False``). Returns one loader, or a tuple of them.

        ``evaluation=True`` is for loaders a metric is computed over: instead of the
        ``DistributedSampler`` (which repeats samples so that every process has as many, and
        so counts them twice), an :class:`~switchyard.evaluation.EvaluationBatchSampler` gives
        every sample to exactly one process, in the same number of batches on every process
        (the last ones smaller where needed), so that strategies whose forward runs collectives
        (FSDP) do not hang. Sum the counts with ``runtime.all_reduce(..., op="sum")``; see
        docs/evaluation.md. The loader needs a ``batch_size``, a sequential or random sampler
        and ``drop_last=False``, checked on one process too."""
        self._ensure_launched()
        from switchyard.dataloading import prepare_dataloader

        if evaluation and not use_distributed_sampler:
            raise ArgumentError(
                "setup_dataloaders(evaluation=True, use_distributed_sampler=False): evaluation "
                "replaces the sampler, and use_distributed_sampler=False asks to keep yours. "
                "Pass one of them"
            )
        prepared = []
        for loader in dataloaders:
            if isinstance(loader, RuntimeDataLoader):
                raise ValueError("this data loader was already set up; pass the original one")
            loader = prepare_dataloader(
                loader,
                self.strategy.distributed_sampler_kwargs if use_distributed_sampler else None,
                rank=self.global_rank,
                evaluation=evaluation,
                even_batches=self.strategy.forward_is_collective,
                strategy_name=type(self.strategy).__name__,
            )
            loader = self.strategy.process_dataloader(loader)
            if move_to_device:
                loader = self.accelerator.process_dataloader(loader)
            prepared.append(RuntimeDataLoader(loader, self.device if move_to_device else None))
        return prepared[0] if len(prepared) == 1 else tuple(prepared)

    # -- the training step ----------------------------------------------------------------

    def backward(
        self, tensor: torch.Tensor, *args: Any, model: nn.Module | None = None, **kwargs: Any
    ) -> None:
        """``tensor.backward()`` the way the strategy and precision need it (gradient scaling,
        engine-specific backward). ``model`` is needed only when several modules were set up
        and the strategy must know which one the loss belongs to."""
        direct = self.__dict__.get("_direct_backward")
        if direct is None:
            direct = self._backward_is_direct()
        if direct:
            tensor.backward(*args, **kwargs)
            return
        module: nn.Module | None
        if isinstance(model, RuntimeModule):
            module = model._inner
        elif model is not None:
            module = model
        elif len(self._modules) == 1:
            module = self._modules[0]._inner
        else:
            module = None
        self.strategy.backward(tensor, module, *args, **kwargs)

    def _backward_is_direct(self) -> bool:
        """Whether :meth:`backward` is plain ``tensor.backward()``: neither the strategy nor its
        precision replaces a step of it. Remembered once the runtime is launched (binding the
        precision to the device may give it a gradient scaler), so later steps ask nothing."""
        strategy = self.strategy
        direct = not (
            overrides(strategy, Strategy, "backward") or strategy.precision.wraps_backward
        )
        if self._launched:
            self.__dict__["_direct_backward"] = direct
        return direct

    def clip_gradients(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        clip_val: float | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor | None:
        """Clip gradients by value (``clip_val``) or by total norm (``max_norm``), after
        unscaling them. Returns the total norm before clipping when clipping by norm."""
        if (clip_val is None) == (max_norm is None):
            raise ValueError(
                f"clip_gradients needs exactly one of clip_val or max_norm; got clip_val="
                f"{clip_val}, max_norm={max_norm}"
            )
        inner_module = module._forward_module if isinstance(module, RuntimeModule) else module
        inner_opt = optimizer._optimizer if isinstance(optimizer, RuntimeOptimizer) else optimizer
        if max_norm is not None:
            return self.strategy.clip_gradients_norm(
                inner_module, inner_opt, max_norm, norm_type, error_if_nonfinite
            )
        assert clip_val is not None
        self.strategy.clip_gradients_value(inner_module, inner_opt, clip_val)
        return None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward context of the strategy's precision, for computation outside the set-up
        module's forward (a loss computed on the outputs, say)."""
        precision = self.strategy.precision
        if not precision.wraps_forward:
            return _NO_CONTEXT
        return precision.forward_context()

    def no_backward_sync(
        self, module: nn.Module, enabled: bool = True
    ) -> contextlib.AbstractContextManager[Any]:
        """Skip gradient synchronization between processes in backward while active (gradient
        accumulation); ``enabled=False`` makes it a no-op so one loop serves every step."""
        if not isinstance(module, RuntimeModule):
            raise TypeError(
                "no_backward_sync needs the module returned by runtime.setup(), got "
                f"{type(module).__name__}"
            )
        if not enabled:
            return _NO_CONTEXT
        strategy = self.strategy
        replaced = self.__dict__.get("_strategy_skips_sync")
        if replaced is None:
            replaced = self.__dict__["_strategy_skips_sync"] = overrides(
                strategy, Strategy, "no_backward_sync"
            )
        if not replaced:
            # the default skips nothing: one shared, stateless context rather than a new one
            return _NO_CONTEXT
        return strategy.no_backward_sync(module._forward_module, enabled)

    @contextlib.contextmanager
    def init_module(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        """Create modules directly on the device and in the precision's dtype:
        ``with runtime.init_module(): model = Net()``. ``empty_init=True`` skips weight
        initialization where the strategy can (weights will be loaded from a checkpoint)."""
        self._ensure_launched()
        with self.strategy.module_init_context(empty_init):
            yield

    @contextlib.contextmanager
    def init_tensor(self) -> Generator[None, None, None]:
        """Create tensors directly on the device and in the precision's dtype (``bfloat16``
        under ``bf16-true``): ``with runtime.init_tensor(): buffer = torch.zeros(8)``."""
        self._ensure_launched()
        with self.strategy.tensor_init_context():
            yield

    def to_device(self, obj: T) -> T:
        """Move a module, tensor or nested structure of tensors to this process's device."""
        if isinstance(obj, nn.Module):
            return obj.to(self.device)
        return move_to_device(obj, self.device)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank zero only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    @staticmethod
    def seed_everything(seed: int | None = None, workers: bool = False) -> int:
        """Seed ``random``, NumPy (if used) and torch; see :func:`switchyard.seed_everything`."""
        return _seed.seed_everything(seed, workers=workers)

    # -- logging and callbacks ------------------------------------------------------------

    @property
    def loggers(self) -> list[Logger]:
        """The loggers given as ``Runtime(loggers=...)``, in that order (a new list)."""
        return list(self._loggers)

    @property
    def logger(self) -> Logger:
        """The first logger given as ``Runtime(loggers=...)``: the main one, for what
        :meth:`log` does not cover (``runtime.logger.log_dir``, a tracker's own API)."""
        if not self._loggers:
            installed = ", ".join(self.registry.names("logger")) or "none"
            raise RuntimeError(
                "this Runtime has no logger: pass one as Runtime(loggers='csv') (a name, a "
                f"switchyard.Logger instance, or a list of them); installed loggers: {installed}"
            )
        return self._loggers[0]

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Log one metric to every logger, from global rank zero only: other processes return
        at once, and nothing waits for another process (log a value reduced with
        :meth:`all_reduce` to log what every process saw).

        ``value`` is a number or a one-element tensor (converted with ``.item()`` on rank zero;
        a larger tensor is refused on every process). ``step`` is your own step (the optimizer
        step, the epoch); ``None`` lets each logger count for itself (the built-in loggers use
        how many times they were called before: 0, 1, 2...), as in Lightning Fabric.
        """
        if not isinstance(name, str):
            raise ArgumentError(
                f"runtime.log(name={_short(name)}, ...): the metric's name must be a string, "
                f"not {type(name).__name__}"
            )
        self._log({name: value}, step, "log")

    def log_dict(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log several metrics at one step to every logger, from global rank zero only; see
        :meth:`log` for values and ``step``."""
        self._log(metrics, step, "log_dict")

    def _log(self, metrics: Mapping[str, Any], step: int | None, what: str) -> None:
        self._check_logging(what)
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise ArgumentError(
                f"runtime.{what} step={_short(step)} ({type(step).__name__}) must be a whole "
                "number, or None to let each logger count steps"
            )
        if not self._loggers:
            self._warn_no_logger(what)
            return
        from switchyard.loggers import as_numbers

        # checked everywhere (so a bad metric fails on every process alike), converted on rank
        # zero only: .item() waits for the device
        is_zero = self.is_global_zero
        numbers = as_numbers(metrics, f"runtime.{what}", convert=is_zero)
        if not is_zero:
            return
        for logger in self._loggers:
            logger.log_metrics(numbers, step=step)

    def log_hyperparams(self, params: Mapping[str, Any] | Any) -> None:
        """Record the run's hyperparameters (a mapping, or an ``argparse.Namespace``) with every
        logger, from global rank zero only."""
        self._check_logging("log_hyperparams")
        from switchyard.loggers import hyperparameters

        checked = hyperparameters(params)
        if not self._loggers:
            self._warn_no_logger("log_hyperparams")
            return
        if self.is_global_zero:
            for logger in self._loggers:
                logger.log_hyperparams(checked)

    def call(self, hook_name: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook_name(*args, **kwargs)`` on every callback given as
        ``Runtime(callbacks=...)`` that has such a method, in order, in this process, as
        Lightning Fabric's ``fabric.call``. Callbacks without it are skipped, and a name that no
        callback has calls nothing; an attribute of that name that is not a method is an
        error."""
        from switchyard.callbacks import call

        call(self._callbacks, hook_name, args, kwargs)

    def _check_logging(self, what: str) -> None:
        if self._torn_down:
            raise RuntimeError(
                f"runtime.{what}() after the run ended (runtime.teardown(), or the end of the "
                "function given to launch()): its loggers are finalized. Log before the end of "
                "the run, or create another Runtime"
            )
        # the rank is known once the process is set up (as for setup())
        self._ensure_launched()

    def _warn_no_logger(self, what: str) -> None:
        if self._warned_no_logger:
            return
        self._warned_no_logger = True
        if self.is_global_zero:
            warnings.warn(
                f"runtime.{what}() was called, but this Runtime has no logger, so nothing is "
                "recorded; pass Runtime(loggers='csv') (or 'tensorboard', or a Logger)",
                RuntimeWarning,
                stacklevel=4,
            )

    def _finalize_loggers(self) -> None:
        """Tell every logger the run ended (on rank zero, where they were used): ``"failed"``
        if it ended with an error, else ``"success"``. A logger that raises is reported as a
        warning; the others and the rest of the teardown go on."""
        if not self._loggers or not self.is_global_zero:
            return
        status = "failed" if self._failed else "success"
        for logger in self._loggers:
            try:
                logger.finalize(status)
            except Exception as error:
                warnings.warn(
                    f"logger {type(logger).__qualname__} failed to finalize ({status}): "
                    f"{type(error).__name__}: {error}; the other loggers and the strategy were "
                    "torn down",
                    RuntimeWarning,
                    stacklevel=3,
                )

    # -- collectives ----------------------------------------------------------------------

    def all_reduce(
        self, data: Any, op: ReduceOp = "mean", *, reduce_op: ReduceOp | None = None
    ) -> Any:
        """Reduce tensors (or numbers) in a nested structure across processes: ``"sum"``,
        ``"mean"``, ``"max"``, ``"min"`` or ``"product"``. ``reduce_op=`` is Lightning Fabric's
        name for ``op``, taken so that Fabric code ports unchanged."""
        if reduce_op is not None:
            if op != "mean":
                raise ArgumentError(
                    f"all_reduce got op={op!r} and reduce_op={reduce_op!r}, one argument under "
                    "two names (reduce_op is Lightning Fabric's); pass one of them"
                )
            op = reduce_op
        normalized = _reduce_op(op)
        return tree_map(
            lambda x: self.strategy.all_reduce(
                _as_tensor(x, self.device, "all_reduce"), op=normalized
            ),
            data,
        )

    def all_gather(self, data: Any) -> Any:
        """Gather tensors in a nested structure from every process, stacked along a new first
        dimension of size ``world_size``."""
        return tree_map(
            lambda x: self.strategy.all_gather(_as_tensor(x, self.device, "all_gather")), data
        )

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Send a picklable object from rank ``src`` to every process."""
        _check_src(src, self.world_size)
        return self.strategy.broadcast(obj, src=src)

    def barrier(self, name: str | None = None) -> None:
        """Wait until every process reaches this point."""
        if name is not None and not isinstance(name, str):
            raise ArgumentError(
                f"barrier name={name!r} ({type(name).__name__}) must be a string or None; it "
                "names the barrier in messages"
            )
        self.strategy.barrier(name)

    @contextlib.contextmanager
    def rank_zero_first(self, local: bool = False) -> Generator[None, None, None]:
        """Run the block on rank zero first, then on the other processes: for downloading or
        preprocessing data once. ``local=True`` uses each node's local rank zero instead."""
        first = (self.local_rank if local else self.global_rank) == 0
        if not first:
            self.barrier("rank_zero_first")
        yield
        if first:
            self.barrier("rank_zero_first")

    # -- checkpoints ----------------------------------------------------------------------

    def save(
        self,
        path: str | os.PathLike[str],
        state: Mapping[str, Any],
        filter: Mapping[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Save ``state`` (modules, optimizers, anything with ``state_dict``, plain values) to
        ``path``, atomically. Single-file strategies write from global rank zero only; sharded
        strategies write one directory together, every sharded tensor in ``state`` included
        (single-file strategies refuse one, naming its key). A failed save raises
        :class:`~switchyard.errors.CheckpointError` with the path and the cause on every process
        and leaves the previous checkpoint as it was; temporaries of killed saves of ``path``
        are deleted first."""
        path = _checked_path(path, "save")
        _check_state(state, "save", allow_none=False)
        _check_filter(filter, state)
        self.strategy.save_checkpoint(Path(path), _unwrap_state(state), filter=filter)

    def load(
        self,
        path: str | os.PathLike[str],
        state: Mapping[str, Any] | None = None,
        strict: bool = True,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        """Restore objects in ``state`` in place from ``path`` (plain values in a dict ``state``
        are replaced). Returns what the checkpoint holds beyond ``state``; with ``state=None``,
        everything. Any strategy reads any checkpoint: a sharded directory is read whole by a
        strategy that does not shard. No file is unpickled without the restrictions of
        ``weights_only=True`` (docs/security.md); ``weights_only=False`` allows arbitrary
        pickles: trusted files only."""
        path = _checked_path(path, "load")
        _check_state(state, "load", allow_none=True)
        for name, flag in (("strict", strict), ("weights_only", weights_only)):
            if not isinstance(flag, bool):
                raise ArgumentError(
                    f"load {name}={flag!r} ({type(flag).__name__}) must be True or False; a "
                    "value that merely looks true or false is refused"
                    + (
                        ", since weights_only decides whether the file may run code"
                        if name == "weights_only"
                        else ""
                    )
                )
        unwrapped = _unwrap_state(state or {})
        remainder = self.strategy.load_checkpoint(
            Path(path), unwrapped, strict=strict, weights_only=weights_only
        )
        if isinstance(state, dict):
            for key, value in unwrapped.items():
                if not isinstance(state[key], (RuntimeModule, RuntimeOptimizer)):
                    state[key] = value
        return remainder

    def load_raw(
        self,
        path: str | os.PathLike[str],
        obj: nn.Module | Optimizer | Any,
        strict: bool = True,
        weights_only: bool = True,
    ) -> None:
        """Load a file that holds one object's state dict, not a checkpoint of entries
        (``torch.save(model.state_dict(), path)``, pretrained weights), into a module (set up
        or not), an optimizer or anything with ``load_state_dict``. Set-up modules load through
        the strategy, as :meth:`load` does (a sharded module takes the full state dict). Read
        as safely as :meth:`load`."""
        path = _checked_path(path, "load_raw")
        from switchyard import checkpoint

        loaded = checkpoint.load(checkpoint.resolve(Path(path)), weights_only=weights_only)
        target = _unwrap_state({"object": obj})
        self.strategy._restore({"object": loaded}, target, strict=strict)


def _run_in_process(runtime: Runtime, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    runtime._launched = True
    try:
        runtime._setup_process()
        return function(runtime, *args, **kwargs)
    except BaseException as error:
        runtime._failed = True
        explanation = _explain(runtime, error)
        if explanation is not None:
            # travels with the traceback torch.multiprocessing sends to the launching process
            if hasattr(error, "add_note"):
                error.add_note(f"switchyard: {explanation}")
            else:
                print(f"switchyard: {explanation}", file=sys.stderr, flush=True)
        raise
    finally:
        runtime.teardown()


_SUPERVISOR_VARIABLE = "SWITCHYARD_SUPERVISOR_PID"
"""Set in the workers switchyard's torchrun launcher starts (as
``switchyard.launchers.worker.SUPERVISOR_VARIABLE``, which this module does not import)."""

_teardown_timed_out = False
"""Whether this process's teardown found peers that never reached the end of the run; the
worker entry point (``switchyard.launchers.worker``) then ends the process with status 1."""


def _explain(runtime: Runtime, error: BaseException, what: str | None = None) -> str | None:
    """The strategy's account of a failed collective (which ranks never reached it), if it
    gives one (``ParallelStrategy.explain_failure``); never raises."""
    explain = getattr(runtime.strategy, "explain_failure", None)
    if explain is None:
        return None
    try:
        result = explain(error) if what is None else explain(error, what)
    except Exception:
        return None
    return result if isinstance(result, str) else None


def _timeout_argument(timeout: object) -> tuple[timedelta, str] | None:
    """``(timeout, where it came from)``: ``Runtime(timeout=...)``, else ``SWITCHYARD_TIMEOUT``
    (what ``switchyard run --timeout`` sets), else ``None``; validated either way."""
    from switchyard.timeouts import TIMEOUT_VARIABLE, parse_timeout

    if timeout is not None:
        return parse_timeout(timeout, "timeout"), "timeout"
    value = os.environ.get(TIMEOUT_VARIABLE, "")
    if not value.strip():
        return None
    return parse_timeout(value, TIMEOUT_VARIABLE), TIMEOUT_VARIABLE


def _apply_timeout(plan: Plan, timeout: timedelta, source: str) -> None:
    """Give the timeout to the strategy; a distributed strategy that cannot take one is an
    error (a silently ignored timeout would leave the job unbounded)."""
    apply = getattr(plan.strategy, "set_runtime_timeout", None)
    if apply is not None:
        apply(timeout, source)
    elif plan.world_size > 1 and source == "timeout":
        raise SelectionError(
            f"strategy {plan.names['strategy']!r} ({type(plan.strategy).__name__}) takes no "
            "timeout: it is not built on switchyard.parallel.ParallelStrategy. Configure its "
            "timeout the way its plugin documents, and drop timeout= from Runtime()"
        )


_exit_failed = False
"""Whether this process is ending with a non-zero status that no uncaught exception explains
(``sys.exit(3)``); set through :func:`_exiting_with_failure`."""


def _exiting_with_failure() -> None:
    """Called by switchyard's worker entry point (``switchyard.launchers.worker``) before the
    atexit handlers run when the program ends with a non-zero status: the teardown at exit then
    skips its barrier, as after an uncaught exception, instead of waiting for peers that may be
    busy in a collective. (The interpreter itself tells an atexit handler nothing about the
    status it exits with.)"""
    global _exit_failed
    _exit_failed = True


def _name_rank_in_tracebacks(runtime: Runtime) -> None:
    """Make an uncaught exception say which process raised it (with several processes writing
    to one terminal, a bare traceback does not tell), and mark the runtime as failed so that its
    teardown at exit does not wait for the other processes."""
    previous = sys.excepthook
    ranks = (runtime.global_rank, runtime.local_rank, runtime.node_rank)
    # a weak reference: the hook outlives the run and must not keep the runtime (and through it
    # the model and process group) alive
    runtime_ref = weakref.ref(runtime)

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        failed = runtime_ref()
        if failed is not None:
            failed._failed = True
        if not issubclass(kind, KeyboardInterrupt):
            print(
                f"switchyard: rank {ranks[0]} (local rank {ranks[1]}, node {ranks[2]}) "
                f"failed with {kind.__name__}: {value}",
                file=sys.stderr,
            )
        previous(kind, value, tb)
        if failed is not None and not issubclass(kind, KeyboardInterrupt):
            # a collective that timed out: which ranks never reached it (they are the cause)
            explanation = _explain(failed, value)
            if explanation is not None:
                print(f"switchyard: {explanation}", file=sys.stderr, flush=True)

    sys.excepthook = hook


def _only_once(name: str, current: Any, plugin: Any) -> Any:
    if current is not None:
        raise ValueError(
            f"{name} was given twice: {name}={current!r} and plugins=[{plugin!r}]; pass one"
        )
    return plugin


def _check_optimizer(optimizer: Optimizer) -> None:
    if isinstance(optimizer, RuntimeOptimizer):
        raise ValueError(
            "this optimizer was already set up by the runtime; pass the original optimizer "
            "(optimizer.optimizer) or keep using the set-up one"
        )
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"runtime.setup takes torch.optim.Optimizer instances after the module, got "
            f"{type(optimizer).__name__}: {optimizer!r}"
        )


def _check_not_set_up(module: nn.Module) -> None:
    if isinstance(module, RuntimeModule):
        raise ValueError(
            "this module was already set up by runtime.setup(); pass the original module "
            "(model.module) or keep using the set-up one"
        )


def _unwrap_state(state: Mapping[str, Any]) -> dict[str, Any]:
    unwrapped: dict[str, Any] = {}
    for key, obj in state.items():
        if isinstance(obj, RuntimeModule):
            # the user's module (not a DDP wrapper), so state-dict keys carry no wrapper prefix
            obj = obj.module
        elif isinstance(obj, RuntimeOptimizer):
            obj = obj._optimizer
        unwrapped[key] = obj
    return unwrapped


def _as_tensor(value: Any, device: torch.device, what: str) -> torch.Tensor:
    """A leaf of a collective's data as a tensor: tensors as they are; numbers and what else
    ``torch.tensor`` takes (NumPy arrays and scalars) converted; anything else refused."""
    if isinstance(value, torch.Tensor):
        return value
    refusal = (
        f"{what} data holds {_short(value)} ({type(value).__name__}), which is not a tensor or "
        "a number; pass tensors or numbers, alone or in lists, tuples and dicts (use "
        "broadcast() for other objects)"
    )
    if isinstance(value, (str, bytes)):
        raise ArgumentError(refusal)
    try:
        return torch.tensor(value, device=device)
    except (OverflowError, RuntimeError, ValueError, TypeError) as error:
        if isinstance(value, (int, float, complex)):
            raise ArgumentError(
                f"{what}: the number {_short(value)} does not fit in a tensor ({error}); pass "
                "a tensor of a wide enough dtype"
            ) from None
        raise ArgumentError(refusal) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}..."


def _plugins_list(plugins: object) -> list[object]:
    """``Runtime(plugins=...)`` as a list; a string, a number or another non-list is refused
    (a string would be taken letter by letter)."""
    if plugins is None:
        return []
    if isinstance(plugins, (str, bytes)) or not isinstance(plugins, Iterable):
        raise ArgumentError(
            f"plugins={_short(plugins)} must be a list: of plugin modules or objects, of "
            "Accelerator/Strategy/Precision/ClusterEnvironment instances, or of 'no:NAME' "
            "strings that block an installed plugin; e.g. plugins=['no:acme']"
        )
    return list(plugins)


def _reduce_op(op: object) -> ReduceOp:
    try:
        return normalize_reduce_op(op)  # type: ignore[arg-type]
    except ValueError as error:
        raise ArgumentError(str(error)) from None


def _check_src(src: object, world_size: int) -> None:
    if isinstance(src, bool) or not isinstance(src, int):
        raise ArgumentError(
            f"broadcast src={src!r} ({type(src).__name__}) must be an integer rank, "
            f"0..{world_size - 1}"
        )
    if not 0 <= src < world_size:
        raise ArgumentError(
            f"broadcast src={src} is not a rank of this job: its {world_size} process(es) have "
            f"ranks 0..{world_size - 1}"
        )


def _checked_path(path: object, what: str) -> str | os.PathLike[str]:
    """A checkpoint path: a non-empty ``str`` or ``os.PathLike`` of ``str``."""
    if isinstance(path, str) or (isinstance(path, os.PathLike) and not isinstance(path, bytes)):
        text = os.fspath(path)
        if isinstance(text, str) and text.strip() and "\0" not in text:
            return path
    raise ArgumentError(
        f"{what} path={_short(path)} ({type(path).__name__}) must be a file or directory name "
        "as a non-empty str or pathlib.Path, e.g. 'checkpoints/last.pt'"
    )


def _check_state(state: object, what: str, *, allow_none: bool) -> None:
    if state is None and allow_none:
        return
    if not isinstance(state, Mapping):
        raise ArgumentError(
            f"{what} state={_short(state)} ({type(state).__name__}) must be a dict of names to "
            "modules, optimizers, objects with state_dict() and plain values, e.g. "
            "{'model': model, 'optimizer': optimizer, 'step': step}"
            + ("; or None" if allow_none else "")
        )
    bad = [key for key in state if not isinstance(key, str)]
    if bad:
        raise ArgumentError(
            f"{what} state has the key {_short(bad[0])} ({type(bad[0]).__name__}); its keys "
            "must be strings, the names the checkpoint stores each object under"
        )


def _check_filter(filter: object, state: Mapping[str, Any]) -> None:
    """``save(filter=...)``: ``None``, or a dict from keys of ``state`` to predicates
    ``(name, value) -> bool`` over that object's state dict."""
    if filter is None:
        return
    if not isinstance(filter, Mapping):
        raise ArgumentError(
            f"save filter={_short(filter)} ({type(filter).__name__}) must be a dict from keys "
            "of state to functions (name, value) -> bool, e.g. filter={'model': lambda name, "
            "value: 'lora' in name}"
        )
    for key, predicate in filter.items():
        if key not in state:
            raise ArgumentError(
                f"save filter names {_short(key)}, which is not a key of state "
                f"({', '.join(repr(k) for k in state) or 'none'}); filter keys pick the "
                "objects whose state dicts are filtered"
            )
        if not callable(predicate):
            raise ArgumentError(
                f"save filter[{key!r}]={_short(predicate)} ({type(predicate).__name__}) must "
                "be a function (name, value) -> bool that keeps the entries it is true for"
            )
        target = state[key]
        if not (
            isinstance(target, (Mapping, nn.Module, Optimizer, RuntimeModule, RuntimeOptimizer))
            or callable(getattr(target, "state_dict", None))
        ):
            raise ArgumentError(
                f"save filter[{key!r}] applies to state[{key!r}]={_short(target)} "
                f"({type(target).__name__}), which has no state dict to filter (a module, an "
                "optimizer, an object with state_dict() or a dict); drop it from filter"
            )
