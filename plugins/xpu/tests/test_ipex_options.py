"""IPEXOptimization's arguments and refusals: what needs no IPEX installed.

These run in every environment, with the real runtime on the CPU; what trains through IPEX is
in test_ipex_training.py (the IPEX environment, scripts/test-ipex).
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from switchyard import Runtime
from switchyard.registry import PluginHookError
from switchyard_xpu import IPEXOptimization
from switchyard_xpu import optimization as ipex_optimization
from switchyard_xpu.optimization import IPEXError, ipex_mismatch, ipex_version


def test_unknown_level_is_refused_naming_the_levels() -> None:
    with pytest.raises(IPEXError, match=r"level='O3'.*'O0', 'O1'"):
        IPEXOptimization(level="O3")


def test_unknown_option_is_refused_listing_the_options() -> None:
    with pytest.raises(IPEXError, match=r"weight_prepack=.*not an option.*weights_prepack"):
        IPEXOptimization(weight_prepack=False)


@pytest.mark.parametrize("name", ["dtype", "inplace", "optimizer", "model"])
def test_arguments_switchyard_decides_are_refused_with_the_reason(name: str) -> None:
    with pytest.raises(IPEXError, match=rf"IPEXOptimization\({name}=\.\.\.\) is not an option: "):
        IPEXOptimization(**{name: None})


def test_options_are_kept_and_shown() -> None:
    plugin = IPEXOptimization(level="O0", weights_prepack=False)
    assert plugin.options == {"weights_prepack": False}
    assert repr(plugin) == "IPEXOptimization(level='O0', weights_prepack=False)"


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        ("16-mixed", "computes in torch.float16"),
        ("bf16-true", "stores parameters in torch.bfloat16"),
        ("64-true", "stores parameters in torch.float64"),
    ],
)
def test_precisions_ipex_cannot_train_stop_the_launch(precision: str, expected: str) -> None:
    runtime = Runtime(
        accelerator="cpu", devices=1, precision=precision, plugins=[IPEXOptimization()]
    )
    with pytest.raises(PluginHookError, match="switchyard_runtime_started") as caught:
        runtime.launch()
    assert isinstance(caught.value.__cause__, IPEXError)
    assert expected in str(caught.value.__cause__)
    assert "use 32-true or bf16-mixed" in str(caught.value.__cause__) or "use bf16-mixed" in str(
        caught.value.__cause__
    )


def test_several_processes_are_refused_before_they_start() -> None:
    runtime = Runtime(accelerator="cpu", devices=2, strategy="ddp", plugins=[IPEXOptimization()])
    problem = IPEXOptimization().problem(runtime)
    assert problem is not None
    assert "supports one process, but this run has 2 (strategy 'ddp')" in problem


@pytest.mark.skipif(ipex_version() is not None, reason="intel_extension_for_pytorch is installed")
def test_without_ipex_the_launch_says_how_to_install_it() -> None:
    runtime = Runtime(accelerator="cpu", devices=1, plugins=[IPEXOptimization()])
    with pytest.raises(PluginHookError) as caught:
        runtime.launch()
    message = str(caught.value.__cause__)
    assert "intel_extension_for_pytorch is not installed" in message
    assert "pip install 'switchyard[xpu]'" in message


def test_ipex_for_another_torch_release_is_named_before_its_import(monkeypatch) -> None:
    """FAKE package metadata: IPEX's distribution reports a release for another torch (an IPEX
    for another torch fails inside its own import, with no useful message)."""
    other = "2.5.0" if not torch.__version__.startswith("2.5.") else "2.6.0"
    monkeypatch.setattr(
        ipex_optimization.importlib.metadata,
        "version",
        lambda name: (
            other if name == "intel-extension-for-pytorch" else importlib.metadata.version(name)
        ),
    )
    problem = ipex_mismatch()
    assert problem is not None
    assert f"intel-extension-for-pytorch {other} works only with torch {other[:3]}.*" in problem
    assert torch.__version__ in problem
    with pytest.raises(IPEXError, match="works only with torch"):
        ipex_optimization.import_ipex()
