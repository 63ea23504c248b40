"""Running the conformance kit as a user does, in a separate pytest process, and plugins that are
broken on purpose so that the kit can be seen to fail.

The broken plugins are real installed distributions (``*.dist-info`` with an entry point)
written to a folder that is put on ``PYTHONPATH``, so that the kit's own processes, the
strategy job's torchrun or spawned workers included, discover them exactly as they would a
pip-installed plugin.

A kit session takes a minute of CPU time or less, most of it in processes that leave the other
core idle (the kit's pytest while the strategy job starts, the job's one process), so the
sessions of the tests marked ``kit_session`` are started ahead, :data:`KIT_PARALLEL` at a time, in
the order the tests run (:func:`kit_sessions`); each test then asserts on its own session's
result (the ``kit`` fixture). Sessions that need a file a test writes first still run inside the
test (``run_kit``).
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from switchyard.testing.subprocesses import child_environment

KIT_TIMEOUT = 300
"""Seconds a kit session may take; its strategy job gets at most JOB_TIMEOUT of them, so the
kit, not this test, ends a job that hangs (and all of the job's processes with it)."""

JOB_TIMEOUT = "150"

KIT_PARALLEL = 2
"""Kit sessions running at once: this machine's two cores."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kit_session(*args, pythonpath=(), suite=None): the kit session the test asserts on, "
        "started ahead (tests/conformance/conftest.py): `python -m pytest -p switchyard.testing "
        "ARGS` with the folders of the fixtures named in pythonpath on PYTHONPATH, or with "
        "suite=FOLDER, the project's own test suite in FOLDER",
    )


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
    "switchyard-hardwired": {
        "hardwired_plugin": '''
            """An accelerator whose process group backend is hard-coded."""
            from switchyard import AcceleratorEntry, hookimpl

            @hookimpl
            def switchyard_accelerators():
                yield AcceleratorEntry(
                    name="hardwired_nccl_cpu",
                    factory="hardwired_accelerator:HardwiredAccelerator",
                    description="Two devices behind a hard-coded NCCL backend (broken on purpose)",
                    priority=-100,
                )
        ''',
        "hardwired_accelerator": '''
            """Two devices (standing in on the CPU) whose accelerator hard-codes NCCL as their
            process group backend, whatever distributed_backend says and although NCCL takes
            no tensors of theirs: devices="auto" selects DDP, whose processes could only fail
            once started, and an accelerator declaring distributed_backend=None still gets it."""
            from switchyard_cpu import CPUAccelerator

            class HardwiredAccelerator(CPUAccelerator):
                @classmethod
                def device_count(cls):
                    return 2

                @classmethod
                def auto_device_count(cls):
                    return 2

                @classmethod
                def parse_devices(cls, devices):
                    if devices == "auto":
                        return [0, 1]
                    return super().parse_devices(devices)

                @classmethod
                def process_group_backend(cls):
                    return "nccl"  # the bug: not what the device (or the declaration) says
        ''',
    },
    "switchyard-copying": {
        "copying_plugin": '''
            """A single-device strategy that trains a copy of the module."""
            from switchyard import StrategyEntry, hookimpl

            @hookimpl
            def switchyard_strategies():
                yield StrategyEntry(
                    name="copying_single_device",
                    factory="copying_strategy:CopyingStrategy",
                    description="One device, training a copy of the module (broken on purpose)",
                    priority=-100,
                )
        ''',
        "copying_strategy": '''
            """A strategy that replaces the module's parameters by new nn.Parameter objects (it
            runs a deep copy of the module) and does not re-point the optimizers at them, so an
            optimizer created before runtime.setup steps parameters the model does not use."""
            import copy

            from switchyard.builtin.single_device import SingleDeviceStrategy

            class CopyingStrategy(SingleDeviceStrategy):
                def setup_module_and_optimizers(self, module, optimizers):
                    return super().setup_module_and_optimizers(copy.deepcopy(module), optimizers)
        ''',
    },
    "switchyard-unseeded": {
        "unseeded_plugin": '''
            """An accelerator whose device has a generator seeding does not reach."""
            from switchyard import AcceleratorEntry, hookimpl

            @hookimpl
            def switchyard_accelerators():
                yield AcceleratorEntry(
                    name="unseeded_cpu",
                    factory="unseeded_accelerator:UnseededAccelerator",
                    description="A device with its own, unseeded generator (broken on purpose)",
                    priority=-100,
                )
        ''',
        "unseeded_accelerator": '''
            """The CPU seen through a device layer with a random generator of its own, the way
            XLA has one, that torch.manual_seed does not reach; the accelerator does not
            override manual_seed to seed it. Active from setup_device to teardown."""
            import os

            import torch
            from torch.overrides import TorchFunctionMode

            from switchyard_cpu import CPUAccelerator

            class OwnGenerator(TorchFunctionMode):
                def __init__(self):
                    super().__init__()
                    seed = int.from_bytes(os.urandom(7), "little")
                    self.generator = torch.Generator().manual_seed(seed)

                def __torch_function__(self, func, types, args=(), kwargs=None):
                    kwargs = dict(kwargs or {})
                    if func in (torch.rand, torch.randn) and kwargs.get("generator") is None:
                        kwargs["generator"] = self.generator
                    return func(*args, **kwargs)

            class UnseededAccelerator(CPUAccelerator):
                _mode = None

                def setup_device(self, device):
                    self._mode = OwnGenerator()
                    self._mode.__enter__()

                def teardown(self):
                    if self._mode is not None:
                        self._mode.__exit__(None, None, None)
                        self._mode = None
        ''',
    },
    "switchyard-matmul-autocast": {
        "matmul_autocast_plugin": '''
            """An accelerator whose autocast covers the bare matrix product only."""
            from switchyard import AcceleratorEntry, hookimpl

            @hookimpl
            def switchyard_accelerators():
                yield AcceleratorEntry(
                    name="matmul_autocast_cpu",
                    factory="matmul_autocast_accelerator:MatmulAutocastAccelerator",
                    description="A device whose autocast covers only mm (broken on purpose)",
                    priority=-100,
                )
        ''',
        "matmul_autocast_accelerator": '''
            """The CPU seen through a device layer whose autocast lists only the matrix product:
            a linear layer with a bias (addmm) and convolutions stay float32 under autocast,
            while the accelerator still claims the mixed precisions. Active from setup_device to
            teardown."""
            import torch
            from torch.nn import functional
            from torch.overrides import TorchFunctionMode

            from switchyard_cpu import CPUAccelerator

            def _uncovered(func, args, kwargs):
                if func is functional.linear:
                    return (args[2] if len(args) > 2 else kwargs.get("bias")) is not None
                return func in (torch.conv1d, torch.conv2d)

            def _float(value):
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    return value.float()
                return value

            class MatmulOnlyAutocast(TorchFunctionMode):
                def __torch_function__(self, func, types, args=(), kwargs=None):
                    kwargs = kwargs or {}
                    if torch.is_autocast_enabled("cpu") and _uncovered(func, args, kwargs):
                        with torch.autocast("cpu", enabled=False):
                            return func(*[_float(a) for a in args], **kwargs)
                    return func(*args, **kwargs)

            class MatmulAutocastAccelerator(CPUAccelerator):
                _mode = None

                def setup_device(self, device):
                    self._mode = MatmulOnlyAutocast()
                    self._mode.__enter__()

                def teardown(self):
                    if self._mode is not None:
                        self._mode.__exit__(None, None, None)
                        self._mode = None
        ''',
    },
    "switchyard-sharded-flag": {
        "sharded_flag_plugin": '''
            """DDP declared as a sharding strategy: correct, but its class does not check
            supports_sharding itself, so only selection refuses it where sharding is absent."""
            from switchyard import StrategyEntry, hookimpl

            @hookimpl
            def switchyard_strategies():
                yield StrategyEntry(
                    name="ddp_sharded_flag",
                    factory="switchyard_ddp.strategy:DDPStrategy",
                    init_args={"start_method": "spawn"},
                    description="DDP declared sharded=True, checked by selection alone",
                    distributed=True,
                    sharded=True,
                    priority=-100,
                )
        ''',
    },
}

AUTOLOADED_EXTENSION: dict[str, str] = {
    "fakedev_plugin": '''
        """An accelerator plugin whose hooks module imports the device runtime it requires."""
        import fakedev_runtime  # noqa: F401  # the bug: an engine imported at discovery

        from switchyard import AcceleratorEntry, hookimpl

        @hookimpl
        def switchyard_accelerators():
            yield AcceleratorEntry(
                name="fakedev",
                factory="fakedev_accelerator:FakeDevAccelerator",
                description="A device whose plugin imports its runtime at discovery (broken)",
                requires=("fakedev_runtime",),
                priority=-100,
            )
    ''',
    "fakedev_accelerator": """
        from switchyard_cpu import CPUAccelerator

        class FakeDevAccelerator(CPUAccelerator):
            pass
    """,
    "fakedev_runtime": '''
        """Stands for a vendor's device runtime, heavy to import, which its torch.backends entry
        point has `import torch` load in every process (torch's device-extension autoload)."""
        LOADED_BY_TORCH = False

        def autoload():
            global LOADED_BY_TORCH
            LOADED_BY_TORCH = True
    ''',
}
"""switchyard-fakedev: a plugin and the out-of-tree torch extension it requires, which declares a
``torch.backends`` entry point; in its own folder, so that no other kit run autoloads it."""


def write_distribution(
    root: Path,
    distribution: str,
    modules: Mapping[str, str],
    entry_points: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Install ``distribution`` into ``root`` (a folder for ``PYTHONPATH``): each module's
    source, and a ``*.dist-info`` with ``entry_points`` (default: the first module as the
    ``switchyard`` entry point named without its ``_plugin`` suffix)."""
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
    if entry_points is None:
        entry_point = next(iter(modules))
        entry_points = {"switchyard": {entry_point.removesuffix("_plugin"): entry_point}}
    folder = root / f"{distribution.replace('-', '_')}-1.0.0.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0.0\n"
    )
    groups = "".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items())
        for group, points in entry_points.items()
    )
    (folder / "entry_points.txt").write_text(groups)


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the broken plugins as installed distributions."""
    root = tmp_path_factory.mktemp("broken-site")
    for distribution, modules in BROKEN_PLUGINS.items():
        write_distribution(root, distribution, modules)
    return root


@pytest.fixture(scope="session")
def autoloaded_extension_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding switchyard-fakedev (:data:`AUTOLOADED_EXTENSION`): its plugin, and the
    torch extension that ``import torch`` autoloads wherever the folder is on the path."""
    root = tmp_path_factory.mktemp("autoload-site")
    write_distribution(
        root,
        "switchyard-fakedev",
        AUTOLOADED_EXTENSION,
        {
            "switchyard": {"fakedev": "fakedev_plugin"},
            "torch.backends": {"fakedev": "fakedev_runtime:autoload"},
        },
    )
    return root


CONTRACT_PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
"""tests/plugins: the contract plugin's package, ``switchyard_contract``."""


@pytest.fixture(scope="session")
def contract_site(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """``PYTHONPATH`` folders under which ``switchyard-contract`` is installed: a
    ``*.dist-info`` with the entry point ``contract = switchyard_contract.plugin`` in a
    temporary folder, and tests/plugins (where the package is)."""
    root = tmp_path_factory.mktemp("contract-site")
    distribution = "switchyard-contract"
    info = root / f"{distribution.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[switchyard]\ncontract = switchyard_contract.plugin\n")
    return [root, CONTRACT_PLUGINS]


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

    def assert_conformant(self) -> None:
        """Every check ran and passed, and the report says so."""
        not_passed = {
            n: (c["outcome"], c["message"])
            for n, c in self.checks().items()
            if c["outcome"] != "passed"
        }
        assert not not_passed, f"{not_passed}\n{self.output}"
        assert self.returncode == 0, self.output
        summary = self.report["summary"]
        assert summary["result"] == "passed"
        assert summary["failed"] == summary["skipped"] == summary["not run"] == 0
        assert summary["passed"] == summary["total"] > 0


PythonPath = Path | Sequence[Path] | None
"""Folders for a kit session's ``PYTHONPATH``: one, several, or none."""


def _finish(
    command: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    running: set[subprocess.Popen[str]] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(command, capture_output=True, text=True, timeout=timeout, ...)``, with
    the process in ``running`` while it runs, so that whoever started it ahead can stop it."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    ) as proc:
        if running is not None:
            running.add(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            if running is not None:
                running.discard(proc)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _kit_environment(pythonpath: PythonPath) -> dict[str, str]:
    """A clean environment for a kit session (taken in the main thread: tests change
    ``os.environ``)."""
    return child_environment(
        import_path=False,
        pythonpath=[pythonpath] if isinstance(pythonpath, Path) else list(pythonpath or ()),
        plugin_switches=False,
    )


def _run_kit(
    tmp_path: Path,
    *args: str,
    pythonpath: PythonPath = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    running: set[subprocess.Popen[str]] | None = None,
) -> KitRun:
    """``python -m pytest -p switchyard.testing ARGS --switchyard-report ...`` in a clean
    environment (``env``, default :func:`_kit_environment`), the way a vendor runs the kit;
    ``running``: see :func:`_finish`."""
    report = tmp_path / "conformance.json"
    if env is None:
        env = _kit_environment(pythonpath)
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
    proc = _finish(command, env=env, cwd=cwd or tmp_path, timeout=KIT_TIMEOUT, running=running)
    output = proc.stdout + proc.stderr
    data = json.loads(report.read_text()) if report.is_file() else {}
    return KitRun(proc.returncode, output, data)


SUITE_TIMEOUT = 280
"""Seconds a project's own test suite, which runs the kit, may take (``kit_session(suite=...)``)."""


def _run_suite(
    folder: Path, env: dict[str, str], running: set[subprocess.Popen[str]]
) -> subprocess.CompletedProcess[str]:
    """``python -m pytest -q`` in ``folder``, in the clean environment ``env``, as its CI runs
    it; ``running``: see :func:`_finish`."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    return _finish(command, env=env, cwd=folder, timeout=SUITE_TIMEOUT, running=running)


class KitSessions:
    """The kit sessions of the selected tests marked ``kit_session``, running ahead of them."""

    def __init__(self, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        self.pool = pool
        self.started: dict[str, concurrent.futures.Future[Any]] = {}
        self.running: set[subprocess.Popen[str]] = set()

    def start(self, item: pytest.Item, tmp_path: Path, pythonpath: list[Path]) -> None:
        marker = item.get_closest_marker("kit_session")
        assert marker is not None
        suite = marker.kwargs.get("suite")
        env = _kit_environment(pythonpath)
        if suite is not None:
            self.started[item.nodeid] = self.pool.submit(_run_suite, suite, env, self.running)
        else:
            self.started[item.nodeid] = self.pool.submit(
                _run_kit, tmp_path, *marker.args, env=env, running=self.running
            )

    def stop(self) -> None:
        """Start no more sessions, and end those running: their tests will not run (a -x stop,
        an interrupt)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(self.running):
            proc.kill()
        self.pool.shutdown(wait=True)

    def result(self, item: pytest.Item) -> Any:
        """The finished session of ``item``: a :class:`KitRun`, or for ``suite=`` the
        ``subprocess.CompletedProcess`` of the suite."""
        found = self.started.get(item.nodeid)
        assert found is not None, f"{item.nodeid} has no kit_session marker"
        return found.result()


@pytest.fixture(scope="session")
def kit_sessions(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KitSessions]:
    """Starts, at the first test that asks for one, the sessions of every selected test marked
    ``kit_session``, in the order the tests run, :data:`KIT_PARALLEL` at a time."""
    pool = concurrent.futures.ThreadPoolExecutor(KIT_PARALLEL, thread_name_prefix="kit-session")
    sessions = KitSessions(pool)
    for item in request.session.items:
        marker = item.get_closest_marker("kit_session")
        if marker is None:
            continue
        names = marker.kwargs.get("pythonpath", ())
        pythonpath = [request.getfixturevalue(name) for name in names]
        # fixtures naming several folders (contract_site) are flattened in their order
        folders = [f for p in pythonpath for f in (p if isinstance(p, list) else [p])]
        sessions.start(item, tmp_path_factory.mktemp("kit-session"), folders)
    yield sessions
    sessions.stop()


@pytest.fixture
def kit(request: pytest.FixtureRequest, kit_sessions: KitSessions) -> Any:
    """The finished kit session of this test's ``kit_session`` marker (a :class:`KitRun`)."""
    return kit_sessions.result(request.node)


@pytest.fixture
def run_kit(tmp_path: Path) -> Callable[..., KitRun]:
    """``run_kit("--switchyard-accelerator", "cpu", pythonpath=site)``: see :func:`_run_kit`."""

    def run(*args: str, pythonpath: PythonPath = None, cwd: Path | None = None) -> KitRun:
        return _run_kit(tmp_path, *args, pythonpath=pythonpath, cwd=cwd)

    return run
