"""Running the conformance kit as a user does, in a separate pytest process, and plugins that are
broken on purpose so that the kit can be seen to fail.

The broken plugins are real installed distributions (``*.dist-info`` with an entry point)
written to a folder that is put on ``PYTHONPATH``, so that the kit's own processes, the
strategy job's torchrun or spawned workers included, discover them exactly as they would a
pip-installed plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

KIT_TIMEOUT = 300
"""Seconds a kit session may take; its strategy job gets at most JOB_TIMEOUT of them, so the
kit, not this test, ends a job that hangs (and all of the job's processes with it)."""

JOB_TIMEOUT = "150"

BROKEN_PLUGINS: dict[str, dict[str, str]] = {
    # distribution -> {module name: source}; the first module is the entry point
    "switchyard-averaging-sum": {
        "averaging_sum_plugin": '''
            """A DDP strategy whose all_reduce averages when asked to sum."""
            from switchyard import StrategyEntry, hookimpl

            @hookimpl
            def switchyard_strategies():
                yield StrategyEntry(
                    name="ddp_averaging_sum",
                    factory="averaging_sum_strategy:AveragingSumDDPStrategy",
                    init_args={"start_method": "spawn"},
                    description="DDP whose all_reduce(op='sum') averages (broken on purpose)",
                    distributed=True,
                    priority=-100,
                )
        ''',
        "averaging_sum_strategy": """
            from switchyard_ddp import DDPStrategy

            class AveragingSumDDPStrategy(DDPStrategy):
                def all_reduce(self, tensor, op="mean"):
                    # the bug: a sum silently becomes a mean
                    return super().all_reduce(tensor, "mean" if op == "sum" else op)
        """,
    },
    "switchyard-lossy": {
        "lossy_plugin": '''
            """An accelerator whose host<->device copies go through float16."""
            from switchyard import AcceleratorEntry, hookimpl

            @hookimpl
            def switchyard_accelerators():
                yield AcceleratorEntry(
                    name="lossy_cpu",
                    factory="lossy_accelerator:LossyAccelerator",
                    description="A device whose copies lose precision (broken on purpose)",
                    priority=-100,
                )
        ''',
        "lossy_accelerator": '''
            """The CPU seen through a device layer that stores copied floats as float16, the
            way a backend with a half-precision transfer path would: active from setup_device
            to teardown, as a device runtime is."""
            import torch
            from torch.overrides import TorchFunctionMode

            from switchyard_cpu import CPUAccelerator

            WIDE = (torch.float32, torch.float64)

            class HalfPrecisionCopies(TorchFunctionMode):
                def __torch_function__(self, func, types, args=(), kwargs=None):
                    result = func(*args, **(kwargs or {}))
                    if func in (torch.Tensor.to, torch.Tensor.cpu) and isinstance(
                        result, torch.Tensor
                    ) and result.dtype in WIDE:
                        return result.to(torch.float16).to(result.dtype)
                    return result

            class LossyAccelerator(CPUAccelerator):
                _mode = None

                def setup_device(self, device):
                    self._mode = HalfPrecisionCopies()
                    self._mode.__enter__()

                def teardown(self):
                    if self._mode is not None:
                        self._mode.__exit__(None, None, None)
                        self._mode = None
        ''',
    },
    "switchyard-ghost": {
        "ghost_plugin": '''
            """An accelerator whose implementation module does not exist."""
            from switchyard import AcceleratorEntry, hookimpl

            @hookimpl
            def switchyard_accelerators():
                yield AcceleratorEntry(
                    name="ghost",
                    factory="switchyard_ghost_backend.accelerator:GhostAccelerator",
                    description="An accelerator that cannot be imported (broken on purpose)",
                    priority=-100,
                )
        ''',
    },
    "switchyard-absent": {
        "absent_plugin": '''
            """A correct accelerator for hardware this machine does not have."""
            from switchyard import AcceleratorEntry, hookimpl

            @hookimpl
            def switchyard_accelerators():
                yield AcceleratorEntry(
                    name="absent_npu",
                    factory="absent_accelerator:AbsentAccelerator",
                    description="An accelerator whose cards are not in this machine",
                    priority=-100,
                )
        ''',
        "absent_accelerator": """
            from switchyard import Accelerator

            class AbsentAccelerator(Accelerator):
                device_type = "cpu"
                distributed_backend = "gloo"

                @classmethod
                def is_available(cls):
                    return False

                @classmethod
                def unavailable_reason(cls):
                    return None if cls.is_available() else "no Absent NPU card is plugged in"

                @classmethod
                def device_count(cls):
                    return 0
        """,
    },
}


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the broken plugins as installed distributions."""
    root = tmp_path_factory.mktemp("broken-site")
    for distribution, modules in BROKEN_PLUGINS.items():
        for name, source in modules.items():
            (root / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
        entry_point = next(iter(modules))
        folder = root / f"{distribution.replace('-', '_')}-1.0.0.dist-info"
        folder.mkdir()
        (folder / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0.0\n"
        )
        plugin = entry_point.removesuffix("_plugin")
        (folder / "entry_points.txt").write_text(f"[switchyard]\n{plugin} = {entry_point}\n")
    return root


@dataclass
class KitRun:
    """A finished kit session: its exit code, output and JSON report."""

    returncode: int
    output: str
    report: dict[str, Any]

    def checks(self) -> dict[str, dict[str, Any]]:
        return {c["id"]: c for c in self.report.get("checks", [])}

    def outcome(self, check: str) -> str:
        found = self.checks()
        assert check in found, f"no check {check!r}; the kit ran: {sorted(found)}\n{self.output}"
        return str(found[check]["outcome"])

    def message(self, check: str) -> str:
        return str(self.checks()[check]["message"])

    def outcomes(self) -> dict[str, str]:
        return {name: c["outcome"] for name, c in self.checks().items()}


def _run_kit(
    tmp_path: Path, *args: str, pythonpath: Path | None = None, cwd: Path | None = None
) -> KitRun:
    """``python -m pytest -p switchyard.testing ARGS --switchyard-report ...`` in a clean
    environment, the way a vendor runs the kit."""
    report = tmp_path / "conformance.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        )
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "switchyard.testing",
        "-p",
        "no:cacheprovider",
        "-q",
        *args,
        "--switchyard-timeout",
        JOB_TIMEOUT,
        "--switchyard-report",
        str(report),
    ]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=KIT_TIMEOUT,
        env=env,
        cwd=cwd or tmp_path,
    )
    output = proc.stdout + proc.stderr
    data = json.loads(report.read_text()) if report.is_file() else {}
    return KitRun(proc.returncode, output, data)


@pytest.fixture
def run_kit(tmp_path: Path) -> Callable[..., KitRun]:
    """``run_kit("--switchyard-accelerator", "cpu", pythonpath=site)``: see :func:`_run_kit`."""

    def run(*args: str, pythonpath: Path | None = None, cwd: Path | None = None) -> KitRun:
        return _run_kit(tmp_path, *args, pythonpath=pythonpath, cwd=cwd)

    return run
