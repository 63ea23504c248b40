"""Opt-in Intel Extension for PyTorch (IPEX): ``ipex.optimize`` after ``runtime.setup``.

``ipex.optimize(model, optimizer=...)`` rewrites a model and its optimizer for Intel hardware:
oneDNN weight prepacking of ``Linear`` and convolution layers, a fused optimizer step, and for
bfloat16 training bfloat16 weights with their float32 master copies kept by the optimizer. It
serves Intel GPUs (device type ``xpu``) and Intel CPUs (device type ``cpu``) alike, so it is
not an accelerator: it is a plugin object the user passes for one run, acting through the
``switchyard_post_setup`` lifecycle hook::

    from switchyard_xpu import IPEXOptimization

    runtime = Runtime(accelerator="cpu", precision="bf16-mixed", plugins=[IPEXOptimization()])
    model, optimizer = runtime.setup(model, optimizer)

The precision stays the strategy's: the IPEX dtype follows it (``32-true`` optimises in float32,
``bf16-mixed`` makes IPEX cast weights to bfloat16 while the forward runs under the precision's
autocast, as IPEX's own training recipe has it). Nothing else of the run changes.

What the runtime hands back follows what IPEX returns. ``ipex.optimize`` may replace the
module's layers (``Linear`` becomes IPEX's ``_IPEXLinear``), the module itself (a bare ``Linear``
passed as the whole model) and, for bfloat16, the module's parameters (the optimizer then steps
float32 master parameters that IPEX copies into the module's bfloat16 ones). It is called with
``inplace=True``, so the user's module object is the one IPEX rewrote: ``model.state_dict()``,
checkpoints and attribute access reach IPEX's patched module, whose state dict holds plain
float32 tensors; the set-up module and optimizer wrap what IPEX returned.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from switchyard import SwitchyardError, hookimpl

if TYPE_CHECKING:
    from switchyard import Runtime
    from switchyard.runtime import SetupResult

IPEX_DISTRIBUTION = "intel-extension-for-pytorch"
IPEX_MODULE = "intel_extension_for_pytorch"

DEVICE_TYPES = ("cpu", "xpu")
"""The device types ``ipex.optimize`` rewrites modules for."""

LEVELS = ("O0", "O1")
"""``ipex.optimize``'s optimisation levels: ``O0`` changes nothing, ``O1`` (its default) applies
weight prepacking, the fused update step and, for bfloat16 training, master-weight splitting."""

OPTIONS = frozenset(
    {
        "weights_prepack",
        "split_master_weight_for_bf16",
        "fuse_update_step",
        "auto_kernel_selection",
        "sample_input",
        "graph_mode",
        "optimize_lstm",
        "conv_bn_folding",
        "linear_bn_folding",
        "replace_dropout_with_identity",
        "concat_linear",
    }
)
"""The keyword arguments of ``ipex.optimize`` (IPEX 2.8) passed through as given."""

_DECIDED_HERE = {
    "model": "the module passed to runtime.setup() is the one optimised",
    "optimizer": "the optimizer passed to runtime.setup() with the module is the one optimised",
    "dtype": (
        "the dtype follows the runtime's precision (32-true: float32, bf16-mixed: bfloat16); "
        "choose it with Runtime(precision=...)"
    ),
    "inplace": (
        "switchyard always optimises in place, so that the module object you hold is the one "
        "that trains"
    ),
}


class IPEXError(SwitchyardError):
    """IPEX cannot be applied to this run: it is not installed, does not match torch, or the
    run is one it cannot optimise. The message says which, and what to do."""


def ipex_version() -> str | None:
    """The installed IPEX version, read from its metadata (importing IPEX loads its kernels),
    or ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(IPEX_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def _minor_release(version: str) -> str:
    match = re.match(r"(\d+)\.(\d+)", version)
    return f"{match.group(1)}.{match.group(2)}" if match else version


def ipex_mismatch() -> str | None:
    """Why IPEX cannot be imported beside this torch, or ``None`` if it can: IPEX works only
    with the torch release it was built for, and beside another one its import fails with no
    useful message."""
    version = ipex_version()
    if version is None:
        return (
            f"{IPEX_MODULE} is not installed; install it with switchyard's xpu extra "
            "(pip install 'switchyard[xpu]': IPEX 2.8 and torch 2.8 from PyPI, for Intel CPUs) "
            "or, for Intel GPUs, Intel's XPU build (pip install torch==2.8.0 "
            "intel-extension-for-pytorch==2.8.10+xpu --extra-index-url "
            "https://pytorch-extension.intel.com/release-whl/stable/xpu/us/)"
        )
    wanted, found = _minor_release(version), _minor_release(torch.__version__)
    if wanted != found:
        return (
            f"{IPEX_DISTRIBUTION} {version} works only with torch {wanted}.*, but torch "
            f"{torch.__version__} is installed; install the torch release it was built for "
            f"(pip install 'torch=={wanted}.*') or the IPEX release matching torch {found}"
        )
    return None


def import_ipex() -> ModuleType:
    """``intel_extension_for_pytorch``, imported; an :class:`IPEXError` saying why not."""
    problem = ipex_mismatch()
    if problem is not None:
        raise IPEXError(problem)
    return importlib.import_module(IPEX_MODULE)


class IPEXOptimization:
    """Apply ``ipex.optimize`` to every module (with its optimizer) ``runtime.setup`` prepares.

    Pass an instance in ``Runtime(plugins=[...])``. It works for one process on one device of
    type ``cpu`` or ``xpu``, at ``32-true`` or ``bf16-mixed``; anything else is refused with the
    reason when the runtime launches, before any model is touched.

    Args:
        level: ``"O1"`` (IPEX's default: prepacked weights, fused optimizer step) or ``"O0"``
            (nothing changes: the same run without IPEX, for comparison).
        **options: other keyword arguments of ``ipex.optimize``, passed as given:
            ``weights_prepack``, ``split_master_weight_for_bf16``, ``fuse_update_step``,
            ``auto_kernel_selection``, ``sample_input``, ``graph_mode``, ``optimize_lstm``,
            ``conv_bn_folding``, ``linear_bn_folding``, ``replace_dropout_with_identity``,
            ``concat_linear``. Left unset, IPEX's level decides, except that bfloat16 weight
            prepacking is turned off on a CPU whose oneDNN has no bfloat16 kernels for it
            (before AVX-512 or AVX-NE-CONVERT), where IPEX would refuse the whole call.

    A module in training mode (``model.train()``, the default) needs its optimizer in the same
    call, ``runtime.setup(model, optimizer)``: IPEX rewrites both together. A module in eval
    mode is optimised for inference and takes no optimizer.
    """

    def __init__(self, *, level: str = "O1", **options: Any) -> None:
        if level not in LEVELS:
            raise IPEXError(
                f"IPEXOptimization(level={level!r}): ipex.optimize knows the levels "
                f"{', '.join(repr(lv) for lv in LEVELS)}; O1 is its default"
            )
        for name in options:
            if name in _DECIDED_HERE:
                raise IPEXError(
                    f"IPEXOptimization({name}=...) is not an option: {_DECIDED_HERE[name]}"
                )
            if name not in OPTIONS:
                raise IPEXError(
                    f"IPEXOptimization({name}=...) is not an option of ipex.optimize; the options "
                    f"are {', '.join(sorted(OPTIONS))}"
                )
        self.level = level
        self.options: Mapping[str, Any] = dict(options)

    def __repr__(self) -> str:
        given = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"IPEXOptimization(level={self.level!r}{given})"

    # -- checks, as early as the runtime allows --------------------------------------------

    def problem(self, runtime: Runtime) -> str | None:
        """Why this runtime's run cannot be optimised by IPEX, or ``None`` if it can."""
        device = runtime.device
        if device.type not in DEVICE_TYPES:
            return (
                f"IPEX optimises modules on Intel CPUs and GPUs (device types "
                f"{', '.join(DEVICE_TYPES)}), but this runtime computes on {device}; use "
                "accelerator='cpu' or 'xpu', or drop IPEXOptimization from plugins"
            )
        world_size = runtime.plan.world_size  # what the run has, launched or not yet
        if world_size > 1:
            # ipex.optimize must run before DDP or FSDP wrap the module (IPEX documents this),
            # and the post-setup hook sees the module after the strategy wrapped it
            return (
                f"IPEXOptimization supports one process, but this run has {world_size} "
                f"(strategy {runtime.plan.names['strategy']!r}): ipex.optimize rewrites the "
                "module before a distributed wrapper may take its parameters, and switchyard "
                "applies it after the strategy set the module up; run on one device, or drop "
                "IPEXOptimization from plugins"
            )
        precision = runtime.precision
        if precision.param_dtype != torch.float32:
            return (
                f"IPEX keeps float32 weights and casts them itself, but precision "
                f"{precision.name!r} stores parameters in {precision.param_dtype}; use 32-true or "
                "bf16-mixed"
            )
        if precision.compute_dtype not in (None, torch.bfloat16):
            return (
                f"precision {precision.name!r} computes in {precision.compute_dtype}, which "
                "IPEXOptimization does not support: IPEX's float16 training keeps float32 master "
                "weights in the optimizer, where the gradient scaler of 16-mixed does not see the "
                "float16 gradients (its step fails: 'No inf checks were recorded for this "
                "optimizer'); use bf16-mixed or 32-true"
            )
        return ipex_mismatch()

    @hookimpl
    def switchyard_runtime_started(self, runtime: Runtime) -> None:
        """Refuse, before any setup, a runtime IPEX cannot optimise (:meth:`problem`)."""
        problem = self.problem(runtime)
        if problem is not None:
            raise IPEXError(problem)

    # -- the optimisation -----------------------------------------------------------------

    def optimize_arguments(self, runtime: Runtime) -> dict[str, Any]:
        """The keyword arguments ``ipex.optimize`` is called with for this runtime (besides
        the module and optimizer): what a hand-written IPEX script passes to get the same run."""
        dtype = runtime.precision.compute_dtype
        arguments: dict[str, Any] = {"dtype": dtype, "level": self.level, "inplace": True}
        arguments.update(self.options)
        if (
            dtype == torch.bfloat16
            and runtime.device.type == "cpu"
            and "weights_prepack" not in self.options
            and self.level != "O0"
            and not _cpu_prepacks_bf16()
        ):
            arguments["weights_prepack"] = False
        return arguments

    @hookimpl
    def switchyard_post_setup(self, runtime: Runtime, setup: SetupResult) -> None:
        """Apply ``ipex.optimize`` to the set-up module and optimizer, with
        :meth:`optimize_arguments`."""
        problem = self.problem(runtime)
        if problem is not None:
            raise IPEXError(problem)
        module = setup.module
        if setup.original_module is not None and module is not setup.original_module:
            raise IPEXError(
                f"strategy {runtime.plan.names['strategy']!r} wrapped the module in "
                f"{type(module).__name__}, but ipex.optimize must be given the module itself; "
                "use a strategy that does not wrap it (single_device)"
            )
        optimizers = setup.optimizers
        if module.training and len(optimizers) != 1:
            raise IPEXError(
                "IPEX optimises a module in training mode together with its optimizer, "
                f"but runtime.setup() got {len(optimizers)} optimizer(s); pass exactly one, "
                "runtime.setup(model, optimizer), or call model.eval() first to optimise for "
                "inference"
            )
        if not module.training and optimizers:
            raise IPEXError(
                "the module is in eval mode, which ipex.optimize optimises for inference, "
                f"without an optimizer, but runtime.setup() got {len(optimizers)}; call "
                "model.train() first to optimise for training"
            )
        ipex = import_ipex()
        arguments = self.optimize_arguments(runtime)
        if optimizers:
            optimized, optimizer = ipex.optimize(module, optimizer=optimizers[0], **arguments)
            setup.module = optimized
            setup.optimizers = [optimizer]
        else:
            setup.module = ipex.optimize(module, **arguments)


def _cpu_prepacks_bf16() -> bool:
    """Whether IPEX's oneDNN prepacks bfloat16 weights on this CPU (AVX-512 BW/VL/DQ or
    AVX-NE-CONVERT); without it, ``ipex.optimize`` refuses bfloat16 with prepacking on."""
    core = importlib.import_module(f"{IPEX_MODULE}._C")
    return bool(core.onednn_has_bf16_support())
