"""ipex.optimize through switchyard, for real, on the CPU: the same losses as hand-written IPEX.

Runs in the IPEX environment (torch 2.8 with intel-extension-for-pytorch 2.8.0, the CPU build):
``scripts/test-ipex``. Elsewhere every test here is skipped. Each test trains one small model
twice from the same seed on the same data: once through ``Runtime(accelerator="cpu",
plugins=[IPEXOptimization()])``, once as IPEX's own training recipe writes it (``model.train()``,
``ipex.optimize(model, optimizer=..., dtype=...)``, the forward under ``torch.autocast`` for
bfloat16), with the same ``ipex.optimize`` arguments. The tolerance is none: both runs perform
the same operations in the same order on the same CPU, so losses and weights must be equal bit
for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from switchyard import Runtime
from switchyard.registry import PluginHookError
from switchyard_xpu import IPEXOptimization
from switchyard_xpu.optimization import IPEXError, ipex_mismatch

pytestmark = pytest.mark.skipif(
    ipex_mismatch() is not None, reason="needs intel_extension_for_pytorch: scripts/test-ipex"
)

STEPS = 12
PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16}
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    # in IPEX's fused list: bfloat16 keeps the module's parameters, split into top and trail
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    # not fused on the CPU: bfloat16 gives the module new bfloat16 parameters and leaves the
    # optimizer float32 master copies
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01),
}


def make_problem(bare: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1234)
    model: nn.Module
    if bare:
        model = nn.Linear(16, 4)
        x = torch.randn(64, 16)
    else:
        # a convolution: IPEX prepacks its weight for float32 training too (a Linear only
        # with auto_kernel_selection), so the module and its parameters' layout do change
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)
        )
        x = torch.randn(16, 3, 6, 6)
    y = torch.randn(x.shape[0], 4)
    return model, x, y


def ipex_arguments(dtype: torch.dtype | None) -> dict[str, Any]:
    """What the hand-written run passes besides the module and optimizer: the dtype and, on a
    CPU whose oneDNN cannot prepack bfloat16 weights, weights_prepack=False (ipex.optimize
    refuses the call otherwise, whoever makes it)."""
    import intel_extension_for_pytorch._C as core

    arguments: dict[str, Any] = {"dtype": dtype}
    if dtype == torch.bfloat16 and not core.onednn_has_bf16_support():
        arguments["weights_prepack"] = False
    return arguments


def hand_written(
    precision: str,
    optimizer_name: str,
    steps: int = STEPS,
    bare: bool = False,
    options: dict[str, Any] | None = None,
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """IPEX's training recipe, without switchyard, with ``options`` passed to ``ipex.optimize``
    as IPEXOptimization(**options) passes them. The output is turned to float32 before the
    loss, as the bf16-mixed precision's forward does."""
    import intel_extension_for_pytorch as ipex

    dtype = PRECISIONS[precision]
    model, x, y = make_problem(bare)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    model.train()
    model, optimizer = ipex.optimize(
        model, optimizer=optimizer, **{**ipex_arguments(dtype), **(options or {})}
    )
    losses = []
    for _ in range(steps):
        autocast = (
            torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            output = model(x)
        loss = nn.functional.mse_loss(output.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def through_switchyard(
    precision: str, optimizer_name: str, steps: int = STEPS, bare: bool = False
) -> tuple[list[float], dict[str, torch.Tensor], dict[str, Any]]:
    runtime = Runtime(
        accelerator="cpu", devices=1, precision=precision, plugins=[IPEXOptimization()]
    )
    model, x, y = make_problem(bare)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    original = model
    model, optimizer = runtime.setup(model, optimizer)
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        runtime.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return (
        losses,
        state,
        {"runtime": runtime, "model": model, "optimizer": optimizer, "original": original},
    )


def assert_same_state(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype == torch.float32, key
        assert ours[key].shape == theirs[key].shape, key
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_training_matches_hand_written_ipex_exactly(precision: str, optimizer_name: str) -> None:
    expected_losses, expected_state = hand_written(precision, optimizer_name)
    losses, state, run = through_switchyard(precision, optimizer_name)
    assert losses == expected_losses
    assert losses[-1] < losses[0]  # it trained
    # the state dict (IPEX's, patched to hold plain float32 tensors) reaches the user
    assert_same_state(state, expected_state)
    assert_same_state(run["original"].state_dict(), expected_state)


def test_ipex_really_rewrote_the_users_module_and_optimizer() -> None:
    """ipex.optimize was applied, in place: the user's module object holds IPEX's layers, and
    the optimizer steps the parameters that module computes with."""
    from intel_extension_for_pytorch.nn.utils._weight_prepack import _IPEXConv2d

    _, _, run = through_switchyard("32-true", "sgd", steps=1)
    original, model, optimizer = run["original"], run["model"], run["optimizer"]
    assert model.module is original
    assert isinstance(original[0], _IPEXConv2d)
    assert hasattr(optimizer.optimizer, "params_attr")  # IPEX's record of what it rewrote
    held = {id(p) for p in original.parameters()}
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    assert stepped
    assert all(id(p) in held for p in stepped)


def test_bf16_non_fused_optimizer_steps_master_weights_the_module_uses() -> None:
    """With AdamW at bf16-mixed IPEX gives the module new bfloat16 parameters and the optimizer
    float32 masters; what the runtime hands back must be IPEX's pair, and train."""
    losses, state, run = through_switchyard("bf16-mixed", "adamw", steps=3)
    assert losses[-1] < losses[0]
    original, optimizer = run["original"], run["optimizer"]
    module_dtypes = {p.dtype for p in original.parameters() if p.requires_grad}
    stepped_dtypes = {p.dtype for group in optimizer.param_groups for p in group["params"]}
    assert torch.bfloat16 in module_dtypes
    assert stepped_dtypes == {torch.float32}
    _, expected_state = hand_written("bf16-mixed", "adamw", steps=3)
    assert_same_state(state, expected_state)


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_a_bare_layer_as_the_whole_model_trains_as_hand_written(precision: str) -> None:
    """ipex.optimize replaces a bare nn.Linear by a new module object (its own _IPEXLinear):
    the set-up module must forward to the replacement and the user's object must follow."""
    expected_losses, expected_state = hand_written(precision, "sgd", bare=True)
    losses, state, run = through_switchyard(precision, "sgd", bare=True)
    assert losses == expected_losses
    assert_same_state(state, expected_state)
    assert_same_state(run["original"].state_dict(), expected_state)


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_inference_matches_hand_written_ipex(precision: str) -> None:
    """A module in eval mode is optimised for inference, with no optimizer."""
    import intel_extension_for_pytorch as ipex

    dtype = PRECISIONS[precision]
    model, x, _ = make_problem()
    model.eval()
    reference = ipex.optimize(model, **ipex_arguments(dtype))
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        expected = reference(x).float()

    runtime = Runtime(
        accelerator="cpu", devices=1, precision=precision, plugins=[IPEXOptimization()]
    )
    model, x, _ = make_problem()
    model.eval()
    model = runtime.setup(model)
    with torch.no_grad():
        output = model(x)
    assert torch.equal(output, expected)


@pytest.mark.parametrize(
    ("load", "options"),
    [
        # IPEX's own order: restore the plain module and optimizer, then optimise them
        ("before setup", {}),
        # into modules IPEX already rewrote: exact only without prepacked weights; with them,
        # hand-written IPEX 2.8.0 does not resume either (its first loss here is inf)
        ("after setup", {"weights_prepack": False}),
    ],
)
def test_checkpoint_round_trip_resumes_the_same_training(
    tmp_path: Path, load: str, options: dict[str, Any]
) -> None:
    """runtime.save of an IPEX-optimised module and optimizer, loaded into a fresh IPEX run,
    continues exactly as the uninterrupted hand-written run does."""

    def train(runtime: Runtime, model: Any, optimizer: Any, x: Any, y: Any) -> list[float]:
        losses = []
        for _ in range(4):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            runtime.backward(loss)
            optimizer.step()
            losses.append(loss.item())
        return losses

    # the uninterrupted run with the same ipex.optimize options: prepacked and plain weights
    # take different oneDNN kernels, whose float32 rounding may differ on some CPUs
    full, _ = hand_written("32-true", "sgd", steps=8, options=options)
    path = tmp_path / "ckpt.pt"
    runtime = Runtime(accelerator="cpu", devices=1, plugins=[IPEXOptimization(**options)])
    model, x, y = make_problem()
    model, optimizer = runtime.setup(model, OPTIMIZERS["sgd"](model.parameters()))
    first = train(runtime, model, optimizer, x, y)
    runtime.save(path, {"model": model, "optimizer": optimizer})

    runtime = Runtime(accelerator="cpu", devices=1, plugins=[IPEXOptimization(**options)])
    model, x, y = make_problem()
    optimizer = OPTIMIZERS["sgd"](model.parameters())
    if load == "before setup":
        runtime.load(path, {"model": model, "optimizer": optimizer})
        model, optimizer = runtime.setup(model, optimizer)
    else:
        model, optimizer = runtime.setup(model, optimizer)
        runtime.load(path, {"model": model, "optimizer": optimizer})
    assert first + train(runtime, model, optimizer, x, y) == full


def test_training_module_without_its_optimizer_is_refused() -> None:
    runtime = Runtime(accelerator="cpu", devices=1, plugins=[IPEXOptimization()])
    model, _, _ = make_problem()
    with pytest.raises(PluginHookError) as caught:
        runtime.setup_module(model)
    assert isinstance(caught.value.__cause__, IPEXError)
    assert "got 0 optimizer(s); pass exactly one" in str(caught.value.__cause__)
    assert "runtime.setup() stopped and returned nothing" in str(caught.value)


def test_two_optimizers_for_one_module_are_refused() -> None:
    runtime = Runtime(accelerator="cpu", devices=1, plugins=[IPEXOptimization()])
    model, _, _ = make_problem()
    first = torch.optim.SGD(model[0].parameters(), lr=0.1)
    second = torch.optim.SGD(model[3].parameters(), lr=0.1)
    with pytest.raises(PluginHookError) as caught:
        runtime.setup(model, first, second)
    assert "got 2 optimizer(s)" in str(caught.value.__cause__)


def test_module_in_eval_mode_with_an_optimizer_is_refused() -> None:
    runtime = Runtime(accelerator="cpu", devices=1, plugins=[IPEXOptimization()])
    model, _, _ = make_problem()
    model.eval()
    with pytest.raises(PluginHookError) as caught:
        runtime.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert "the module is in eval mode" in str(caught.value.__cause__)
    assert "model.train()" in str(caught.value.__cause__)


def test_level_o0_changes_nothing_and_matches_plain_switchyard() -> None:
    """level='O0' leaves model and optimizer as they are: the run equals one without IPEX."""

    def train(plugins: list[object]) -> list[float]:
        runtime = Runtime(accelerator="cpu", devices=1, plugins=plugins)
        model, x, y = make_problem()
        optimizer = OPTIMIZERS["sgd"](model.parameters())
        model, optimizer = runtime.setup(model, optimizer)
        assert type(model.module[0]) is nn.Conv2d
        losses = []
        for _ in range(5):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            runtime.backward(loss)
            optimizer.step()
            losses.append(loss.item())
        return losses

    assert train([IPEXOptimization(level="O0")]) == train([])
