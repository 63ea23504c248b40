"""The broken-plugin suite: real installed distributions, each broken in one way.

Every case is a ``*.dist-info`` folder with an ``entry_points.txt`` (and its plugin modules) in
a folder on ``sys.path``, discovered through ``importlib.metadata`` as a pip-installed plugin
is, next to the really installed first-party plugins and a well-behaved third-party witness,
``switchyard-witness``. For each case:

* the failure is recorded naming the plugin and its distribution (``PluginRegistry.failures``
  at discovery; or when ``"auto"`` skips the entry; or, for lifecycle hooks, in the
  :class:`~switchyard.registry.PluginHookError` or warning);
* the other plugins keep working (the CPU plugin, the witness, the built-in plugin: registered,
  usable, nothing recorded against them);
* ``switchyard plugins`` (and ``--json``) exits 0 and shows it;
* a ``Runtime`` selecting something else runs a training step, for every installed strategy
  (single_device, ddp and fsdp in place, with one process): the strategy matters for ``"auto"``
  and for the lifecycle hooks, which run inside the strategy's process group.

The cases run in this process (a fresh registry per step stands for a fresh process); one test
runs ``python -m switchyard plugins`` for real with every case installed at once. With
``SWITCHYARD_STRESS=1`` each case also gets its own ``switchyard plugins`` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from switchyard import PluginConflictError, Runtime, SelectionError
from switchyard.cli import main as cli_main
from switchyard.errors import PluginError, PluginSelectionError
from switchyard.registry import (
    SLOW_IMPORT_SECONDS,
    PluginHookError,
    PluginRegistry,
    reset_default_registry,
)
from switchyard.selection import select
from switchyard.testing.subprocesses import child_environment

PluginSite = Any
"""tests/conftest.py's ``PluginSite`` (the ``plugin_site`` fixture): conftest modules are not
imported by name."""

HEADER = (
    "from switchyard import hookimpl, AcceleratorEntry, StrategyEntry, PrecisionEntry, "
    "EnvironmentEntry\n"
)
STRESS = os.environ.get("SWITCHYARD_STRESS", "").strip() not in ("", "0")
SLOW_SECONDS = SLOW_IMPORT_SECONDS + 0.1
"""How long the slow plugin's import sleeps."""


def _installed_strategies() -> list[Any]:
    params = [pytest.param("single_device", id="single_device")]
    for name, module in (("ddp", "switchyard_ddp"), ("fsdp", "switchyard_fsdp")):
        try:
            __import__(module)
        except ImportError:
            params.append(
                pytest.param(name, id=name, marks=pytest.mark.skip(f"{module} not installed"))
            )
        else:
            params.append(pytest.param(name, id=name))
    return params


STRATEGIES = _installed_strategies()
QUALIFIED = {
    "cpu": "switchyard-cpu:cpu",
    "single_device": "switchyard:single_device",
    "ddp": "switchyard-ddp:ddp",
    "fsdp": "switchyard-fsdp:fsdp",
}
"""Names qualified by distribution, for the cases that register the first-party names too."""


# -- the cases ----------------------------------------------------------------------------------


def _plugin(site: PluginSite, dist: str, source: str, ep: str | None = None) -> None:
    """Install ``dist`` with one plugin module (``source``) as its entry point ``ep``."""
    base = dist.replace("-", "_")
    module = site.module(f"{base}_plugin", source)
    site.distribution(dist, "1.0.0", {ep or base: module})


def _import_error(site: PluginSite) -> None:
    _plugin(site, "broken-import", "raise ImportError('needs libbroken.so')\n")


def _syntax_error(site: PluginSite) -> None:
    _plugin(site, "broken-syntax", "def switchyard_accelerators(:\n    pass\n")


def _exit_at_import(site: PluginSite) -> None:
    _plugin(site, "broken-exit", "import sys\nsys.exit(3)\n")


def _raising_hook(site: PluginSite) -> None:
    _plugin(
        site,
        "broken-hook",
        HEADER
        + """
@hookimpl
def switchyard_accelerators():
    raise RuntimeError("probing the device failed")

@hookimpl
def switchyard_strategies():
    # the plugin's other hook still registers
    yield StrategyEntry(name="broken_hook_survivor",
                        factory="switchyard.builtin.single_device:SingleDeviceStrategy",
                        priority=-100)
""",
    )


def _exit_in_hook(site: PluginSite) -> None:
    _plugin(
        site,
        "broken-hook-exit",
        HEADER + "import sys\n\n@hookimpl\ndef switchyard_accelerators():\n    sys.exit(4)\n",
    )


def _wrong_return_type(site: PluginSite) -> None:
    _plugin(
        site,
        "broken-return",
        HEADER
        + """
@hookimpl
def switchyard_strategies():
    return {"name": "not_an_entry"}
""",
    )


def _malformed_entry(site: PluginSite) -> None:
    _plugin(
        site,
        "broken-entry",
        HEADER
        + """
@hookimpl
def switchyard_accelerators():
    yield AcceleratorEntry(name="my npu", factory="nowhere:Npu")
""",
    )


def _misspelt_hook(site: PluginSite) -> None:
    _plugin(
        site,
        "broken-spelling",
        HEADER + "\n@hookimpl\ndef switchyard_accelerator():\n    return []\n",
    )


def _malformed_entry_point(site: PluginSite) -> None:
    site.distribution(
        "broken-ep-value", entry_points_text="[switchyard]\nbroken_value = not a module path!\n"
    )


def _entry_points_not_utf8(site: PluginSite) -> None:
    site.distribution("broken-ep-bytes", entry_points_text=b"\xff\xfe[switchyard]\x00 = \xc3\x28\n")


def _entry_points_line_without_value(site: PluginSite) -> None:
    site.distribution(
        "broken-ep-line", entry_points_text="[switchyard]\nthis line has no equals sign\n"
    )


def _entry_points_bad_header(site: PluginSite) -> None:
    site.distribution(
        "broken-ep-header", entry_points_text="[switchyard\nbroken_header = os.path\n"
    )


def _missing_factory_module(site: PluginSite) -> None:
    missing = site.name("broken_ghost_backend")
    _plugin(
        site,
        "broken-ghost",
        HEADER
        + f"""
@hookimpl
def switchyard_strategies():
    yield StrategyEntry(name="ghost_strategy", factory="{missing}.strategy:GhostStrategy",
                        description="its module is not installed", priority=1000)

@hookimpl
def switchyard_accelerators():
    yield AcceleratorEntry(name="ghost_accel", factory="{missing}.accelerator:GhostAccelerator",
                           priority=1000)
""",
    )


def _raising_factory(site: PluginSite) -> None:
    impl = site.module(
        "broken_factory_impl",
        """
        from switchyard.builtin.single_device import SingleDeviceStrategy
        from switchyard_cpu import CPUAccelerator

        class RaisingStrategy(SingleDeviceStrategy):
            def __init__(self, **kwargs):
                raise RuntimeError("license server unreachable")

        class RaisingAccelerator(CPUAccelerator):
            def __init__(self, **kwargs):
                raise RuntimeError("license server unreachable")
        """,
    )
    _plugin(
        site,
        "broken-factory",
        HEADER
        + f"""
@hookimpl
def switchyard_strategies():
    yield StrategyEntry(name="raising_strategy", factory="{impl}:RaisingStrategy", priority=1000)

@hookimpl
def switchyard_accelerators():
    yield AcceleratorEntry(name="raising_accel", factory="{impl}:RaisingAccelerator",
                           priority=1000)
""",
    )


def _wrong_factory_type(site: PluginSite) -> None:
    impl = site.module("broken_type_impl", "def make(**kwargs):\n    return object()\n")
    _plugin(
        site,
        "broken-type",
        HEADER
        + f"""
@hookimpl
def switchyard_strategies():
    yield StrategyEntry(name="objectish", factory="{impl}:make", priority=1000)
""",
    )


def _raising_is_available(site: PluginSite) -> None:
    impl = site.module(
        "broken_available_impl",
        """
        from switchyard_cpu import CPUAccelerator

        class FlakyAccelerator(CPUAccelerator):
            @classmethod
            def is_available(cls):
                raise OSError("driver not loaded")
        """,
    )
    _plugin(
        site,
        "broken-available",
        HEADER
        + f"""
@hookimpl
def switchyard_accelerators():
    yield AcceleratorEntry(name="flaky", factory="{impl}:FlakyAccelerator", priority=1000)
""",
    )


def _raising_detect(site: PluginSite) -> None:
    impl = site.module(
        "broken_detect_impl",
        """
        from switchyard.builtin.environments import LocalEnvironment

        class FlakyEnvironment(LocalEnvironment):
            @classmethod
            def detect(cls):
                raise KeyError("SCHEDULER_JOB_ID")
        """,
    )
    _plugin(
        site,
        "broken-detect",
        HEADER
        + f"""
@hookimpl
def switchyard_environments():
    yield EnvironmentEntry(name="flaky_env", factory="{impl}:FlakyEnvironment", priority=1000)
""",
    )


def _duplicate_name(site: PluginSite) -> None:
    impl = site.module(
        "broken_duplicate_impl",
        """
        from switchyard_cpu import CPUAccelerator

        class TakeoverAccelerator(CPUAccelerator):
            pass
        """,
    )
    _plugin(
        site,
        "broken-duplicate",
        HEADER
        + f"""
@hookimpl
def switchyard_accelerators():
    # the first-party names, with a priority that would win 'auto'
    yield AcceleratorEntry(name="cpu", factory="{impl}:TakeoverAccelerator", priority=1000)

@hookimpl
def switchyard_strategies():
    yield StrategyEntry(name="ddp", factory="switchyard.builtin.single_device:SingleDeviceStrategy",
                        priority=1000)
""",
    )


def _shadowing_entry_point(site: PluginSite) -> None:
    impl = site.module(
        "broken_shadow_impl",
        "from switchyard_cpu import CPUAccelerator\n\nclass Shadow(CPUAccelerator):\n    pass\n",
    )
    _plugin(
        site,
        "broken-shadow",
        HEADER
        + f"""
@hookimpl
def switchyard_accelerators():
    yield AcceleratorEntry(name="shadow_cpu", factory="{impl}:Shadow", priority=-100)
""",
        ep="cpu",  # the CPU plugin's entry-point name
    )


def _shadowing_builtin(site: PluginSite) -> None:
    _plugin(site, "broken-shadow-builtin", HEADER, ep="builtin")


def _slow_import(site: PluginSite) -> None:
    _plugin(site, "broken-slow", f"import time\ntime.sleep({SLOW_SECONDS})\n" + HEADER)


def _raising_runtime_started(site: PluginSite) -> None:
    _plugin(
        site,
        "broken-started",
        HEADER
        + """
@hookimpl
def switchyard_runtime_started(runtime):
    raise RuntimeError("telemetry endpoint down")
""",
    )


def _raising_post_setup(site: PluginSite) -> None:
    # two plugins of one distribution: 'post_b' (registered later, so called first) wraps the
    # module, then 'post_a' raises: the setup fails half way
    wraps = site.module(
        "broken_post_b",
        HEADER
        + """
import torch

class Wrapped(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)

@hookimpl
def switchyard_post_setup(setup):
    setup.module = Wrapped(setup.module)
""",
    )
    raises = site.module(
        "broken_post_a",
        HEADER
        + """
@hookimpl
def switchyard_post_setup(runtime, setup):
    raise ValueError("cannot compile this module")
""",
    )
    site.distribution("broken-post-setup", "1.0.0", {"post_a": raises, "post_b": wraps})


def _raising_teardown(site: PluginSite) -> None:
    _plugin(
        site,
        "broken-teardown",
        HEADER
        + """
@hookimpl
def switchyard_runtime_teardown(runtime):
    raise RuntimeError("could not flush the profiler")
""",
    )


@dataclass(frozen=True)
class Case:
    """One broken distribution and what must be seen of it.

    found_by: ``"discovery"`` (a ``PluginRegistry()`` records it), ``"auto"`` (a ``Runtime``
    choosing ``"auto"`` skips it and records it), ``"conflict"`` (its names are ambiguous:
    recorded at discovery, and ``"auto"`` skips them), ``"slow"`` (flagged, not a failure) or
    ``"lifecycle"`` (the hook fails a running ``Runtime``).
    """

    name: str
    build: Callable[[PluginSite], None]
    distribution: str
    stage: str
    error: str
    found_by: str = "discovery"
    shown: tuple[str, ...] = ()
    """What ``switchyard plugins`` prints about it, besides the distribution's name."""
    check_shown: tuple[str, ...] = ()
    """What only ``switchyard plugins --check`` prints (it creates every entry)."""
    selects: tuple[str, ...] = ()
    """Entries of the case that selecting by name must refuse with a PluginSelectionError."""
    qualified: bool = False
    """Whether the case claims first-party names, so that a Runtime must qualify them."""
    breaks_torch: bool = False
    """Whether ``import torch`` itself fails in a process that has it installed: torch reads
    every distribution's entry points to autoload device extensions, and importlib.metadata
    raises for a file it cannot parse. ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` avoids it."""


CASES = [
    Case("import-error", _import_error, "broken-import", "import", "needs libbroken.so"),
    Case("syntax-error", _syntax_error, "broken-syntax", "import", "SyntaxError"),
    Case("sys-exit-at-import", _exit_at_import, "broken-exit", "import", "sys.exit(3)"),
    Case(
        "raising-hook",
        _raising_hook,
        "broken-hook",
        "switchyard_accelerators",
        "RuntimeError: probing the device failed",
    ),
    Case(
        "sys-exit-in-hook", _exit_in_hook, "broken-hook-exit", "switchyard_accelerators", "exit(4)"
    ),
    Case(
        "wrong-return-type",
        _wrong_return_type,
        "broken-return",
        "switchyard_strategies",
        "must return StrategyEntry records, got str",
    ),
    Case(
        "malformed-entry",
        _malformed_entry,
        "broken-entry",
        "switchyard_accelerators",
        "EntryError: AcceleratorEntry name 'my npu' is not valid",
    ),
    Case("misspelt-hook", _misspelt_hook, "broken-spelling", "register", "did you mean"),
    Case(
        "malformed-entry-point",
        _malformed_entry_point,
        "broken-ep-value",
        "entry points",
        "is not 'package.module'",
    ),
    Case(
        "entry-points-file-not-utf8",
        _entry_points_not_utf8,
        "broken-ep-bytes",
        "entry points",
        "UnicodeDecodeError",
        breaks_torch=True,
    ),
    Case(
        "entry-points-file-line-without-value",
        _entry_points_line_without_value,
        "broken-ep-line",
        "entry points",
        "TypeError",
        breaks_torch=True,
    ),
    Case(
        "entry-points-file-bad-header",
        _entry_points_bad_header,
        "broken-ep-header",
        "entry points",
        "section header '[switchyard' that is not valid",
    ),
    Case(
        "missing-factory-module",
        _missing_factory_module,
        "broken-ghost",
        "factory",
        "No module named",
        found_by="auto",
        shown=("ghost_strategy", "cannot be imported"),
        selects=("strategy:ghost_strategy", "accelerator:ghost_accel"),
    ),
    Case(
        "raising-factory",
        _raising_factory,
        "broken-factory",
        "create",
        "license server unreachable",
        found_by="auto",
        shown=("raising_accel", "cannot be created: RuntimeError: license server unreachable"),
        check_shown=("raising_strategy", "cannot be created"),
        selects=("strategy:raising_strategy", "accelerator:raising_accel"),
    ),
    Case(
        "wrong-factory-type",
        _wrong_factory_type,
        "broken-type",
        "create",
        "which is not a switchyard Strategy",
        found_by="auto",
        check_shown=("objectish", "not a switchyard Strategy"),
        selects=("strategy:objectish",),
    ),
    Case(
        "raising-is-available",
        _raising_is_available,
        "broken-available",
        "is_available",
        "OSError: driver not loaded",
        found_by="auto",
        shown=("flaky", "unavailable_reason() raised OSError: driver not loaded"),
        selects=("accelerator:flaky",),
    ),
    Case(
        "raising-detect",
        _raising_detect,
        "broken-detect",
        "detect",
        "KeyError",
        found_by="auto",
    ),
    Case(
        "duplicate-name",
        _duplicate_name,
        "broken-duplicate",
        "name conflict",
        "is registered by 2 plugins",
        found_by="conflict",
        shown=("name also registered by plugin",),
        qualified=True,
    ),
    Case(
        "shadowing-entry-point-name",
        _shadowing_entry_point,
        "broken-shadow",
        "name",
        "switchyard-cpu",
        shown=("cpu@broken-shadow", "cpu@switchyard-cpu"),
    ),
    Case(
        "shadowing-the-builtin-name",
        _shadowing_builtin,
        "broken-shadow-builtin",
        "name",
        "already taken by builtin (switchyard",
        shown=("builtin@broken-shadow-builtin",),
    ),
    Case("slow-import", _slow_import, "broken-slow", "", "", found_by="slow", shown=("SLOW",)),
    Case(
        "raising-runtime-started",
        _raising_runtime_started,
        "broken-started",
        "switchyard_runtime_started",
        "telemetry endpoint down",
        found_by="lifecycle",
    ),
    Case(
        "raising-post-setup",
        _raising_post_setup,
        "broken-post-setup",
        "switchyard_post_setup",
        "cannot compile this module",
        found_by="lifecycle",
    ),
    Case(
        "raising-teardown",
        _raising_teardown,
        "broken-teardown",
        "switchyard_runtime_teardown",
        "could not flush the profiler",
        found_by="lifecycle",
    ),
]
BY_NAME = {case.name: case for case in CASES}


# -- the witness ----------------------------------------------------------------------------------


def _witness(site: PluginSite) -> str:
    """Install switchyard-witness, a correct third-party plugin with every kind of hook;
    returns its plugin module's name (its ``CALLS`` list records the lifecycle hooks)."""
    impl = site.module(
        "witness_impl",
        """
        from switchyard.builtin.single_device import SingleDeviceStrategy
        from switchyard_cpu import CPUAccelerator

        class WitnessAccelerator(CPUAccelerator):
            pass

        class WitnessStrategy(SingleDeviceStrategy):
            pass
        """,
    )
    module = site.module(
        "witness_plugin",
        HEADER
        + f"""
CALLS = []

@hookimpl
def switchyard_accelerators():
    yield AcceleratorEntry(name="witness_cpu", factory="{impl}:WitnessAccelerator", priority=-50)

@hookimpl
def switchyard_strategies():
    yield StrategyEntry(name="witness_single", factory="{impl}:WitnessStrategy", priority=-50)

@hookimpl
def switchyard_runtime_started(runtime):
    CALLS.append("started")

@hookimpl
def switchyard_post_setup(setup):
    CALLS.append("post_setup")

@hookimpl
def switchyard_runtime_teardown(runtime):
    CALLS.append("teardown")
""",
    )
    site.distribution("switchyard-witness", "2.0.0", {"witness": module})
    return module


@dataclass
class Installed:
    site: PluginSite
    case: Case
    witness: str

    def fresh(self) -> None:
        """Forget this site's imported modules and the process-wide registry, as a new
        process would (so that a slow import is slow again)."""
        for name in [m for m in sys.modules if m.endswith(f"_{self.site.token}")]:
            del sys.modules[name]
        reset_default_registry()

    def calls(self) -> list[str]:
        return list(sys.modules[self.witness].CALLS)


@pytest.fixture
def installed(request: pytest.FixtureRequest, plugin_site: PluginSite) -> Iterator[Installed]:
    case = BY_NAME[request.param]
    witness = _witness(plugin_site)
    case.build(plugin_site)
    yield Installed(plugin_site, case, witness)
    if torch.distributed.is_initialized():  # a failed check must not leak a process group
        torch.distributed.destroy_process_group()


def _case_params(*found_by: str) -> list[str]:
    return [c.name for c in CASES if not found_by or c.found_by in found_by]


def _of(failures: list[Any], distribution: str) -> list[Any]:
    return [f for f in failures if f.plugin.distribution == distribution]


def _assert_others_work(registry: PluginRegistry, case: Case) -> None:
    """The CPU plugin, the built-in plugin and the witness are registered and unharmed: nothing
    is recorded against them but a name conflict that names the case's distribution."""
    cpu = registry.get("accelerator", "switchyard-cpu:cpu")
    assert cpu is not None
    assert cpu.plugin.distribution == "switchyard-cpu"
    assert registry.get("accelerator", "witness_cpu").plugin.distribution == "switchyard-witness"
    assert registry.get("strategy", "witness_single") is not None
    assert registry.get("strategy", "switchyard:single_device") is not None
    assert registry.get("precision", "32-true") is not None
    for distribution in ("switchyard", "switchyard-cpu", "switchyard-witness"):
        for failure in _of(registry.failures, distribution):
            assert failure.stage == "name", failure
            assert case.distribution in failure.error, failure


def _listing(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = cli_main(["plugins", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in out + err
    return out


def _release_the_gil() -> None:
    """Let gloo's worker threads finish with the collectives just run before their process
    group can be destroyed. A gloo worker thread drops its last reference to a finished work
    item with the GIL; when the main thread keeps the GIL from the collective until the
    DistributedDataParallel module (whose reducer holds the process group) is garbage-collected,
    ~ProcessGroupGloo joins that thread while holding the GIL and both wait forever (torch
    2.13; 6 to 50 in-process one-process DDP runs here, never with this pause)."""
    time.sleep(0.02)


def _train_one_step(runtime: Runtime) -> None:
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = runtime.setup(model, optimizer)
    loss = model(torch.randn(4, 3)).pow(2).mean()
    runtime.backward(loss)
    optimizer.step()
    _release_the_gil()


# -- the checks every case gets ------------------------------------------------------------------


@pytest.mark.parametrize("installed", _case_params(), indirect=True)
def test_the_failure_is_recorded_and_the_other_plugins_keep_working(
    installed: Installed,
) -> None:
    case = installed.case
    registry = PluginRegistry()
    for kind in ("accelerator", "strategy", "precision", "environment"):
        registry.registrations(kind)
    _assert_others_work(registry, case)
    recorded = _of(registry.failures, case.distribution)
    if case.found_by == "discovery":
        assert recorded, registry.failures
        (failure,) = recorded
        assert failure.stage == case.stage
        assert case.error in failure.error
        # the record names the plugin and its distribution
        assert case.distribution in failure.describe()
        if failure.hides_entries:
            # an unknown name mentions the plugin that may have provided it
            with pytest.raises(SelectionError, match=case.distribution):
                Runtime(accelerator="nothing_registers_this", devices=1)
    elif case.name.startswith("shadowing"):
        (failure,) = recorded
        assert failure.stage == "name"
        assert case.error in failure.error
    elif case.found_by == "conflict":
        assert registry.conflicts("accelerator").keys() == {"cpu"}
        assert recorded == []  # the plugin loaded; only its names are ambiguous
    else:
        # found when the entry is tried (auto, a name, --check), or when a hook runs
        assert recorded == [], recorded


@pytest.mark.parametrize("installed", _case_params(), indirect=True)
def test_switchyard_plugins_exits_0_and_shows_it(
    installed: Installed, capsys: pytest.CaptureFixture[str]
) -> None:
    case = installed.case
    installed.fresh()
    text = _listing(capsys)
    installed.fresh()
    report = json.loads(_listing(capsys, "--json"))
    assert case.distribution in text
    for expected in case.shown:
        assert expected in text, text
    # the others are listed as usable
    rows = {(e["kind"], e["name"], e["distribution"]): e for e in report["entries"]}
    assert rows["accelerator", "witness_cpu", "switchyard-witness"]["usable"] is True
    cpu = rows["accelerator", "cpu", "switchyard-cpu"]
    if case.qualified:  # usable by its qualified name
        assert "select it as 'cpu@" in cpu["reason"] or "select it as 'cpu:cpu'" in cpu["reason"]
    else:
        assert cpu["usable"] is True, cpu
    plugins = {p["name"]: p for p in report["plugins"]}
    if case.found_by == "discovery":
        (failure,) = [f for f in report["failures"] if f["distribution"] == case.distribution]
        assert (failure["stage"], failure["version"]) == (case.stage, "1.0.0")
        assert case.error in failure["error"]
    if case.found_by == "slow":
        (slow,) = [p for p in report["plugins"] if p["distribution"] == case.distribution]
        assert slow["slow"] is True
        assert slow["import_seconds"] >= SLOW_SECONDS - 0.05
        assert "slow plugins (import and registration above" in text
    else:
        assert not any(p["slow"] for p in plugins.values()), plugins
    if case.found_by == "lifecycle":
        hooks = {
            h
            for p in report["plugins"]
            if p["distribution"] == case.distribution
            for h in p["hooks"]
        }
        assert case.stage in hooks
    if case.check_shown:
        installed.fresh()
        checked = _listing(capsys, "--check")
        for expected in case.check_shown:
            assert expected in checked, checked


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("installed", _case_params(), indirect=True)
def test_a_runtime_selecting_something_else_works(installed: Installed, strategy: str) -> None:
    case = installed.case
    installed.fresh()
    accelerator = "cpu"
    kwargs: dict[str, Any] = {}
    if case.qualified:
        accelerator, strategy = QUALIFIED[accelerator], QUALIFIED[strategy]
    if case.found_by == "lifecycle":
        kwargs["plugins"] = [f"no:{case.distribution}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime = Runtime(accelerator=accelerator, strategy=strategy, devices=1, **kwargs)
        assert runtime.registry.get("accelerator", accelerator).plugin.distribution == (
            "switchyard-cpu"
        )
        runtime.launch()
        _train_one_step(runtime)
        runtime.teardown()
    assert not torch.distributed.is_initialized()
    assert installed.calls() == ["started", "post_setup", "teardown"]
    # whatever was warned about on the way names the plugin that caused it
    for warning in caught:
        if issubclass(warning.category, RuntimeWarning) and "plugin" in str(warning.message):
            assert case.distribution in str(warning.message), warning.message


# -- what 'auto' does with them ------------------------------------------------------------------


@pytest.mark.parametrize("installed", _case_params("auto", "conflict"), indirect=True)
def test_auto_skips_records_and_warns(installed: Installed) -> None:
    case = installed.case
    installed.fresh()
    with pytest.warns(RuntimeWarning, match=case.distribution) as caught:
        runtime = Runtime(devices=1)
    chosen = {
        kind: runtime.registry.get(kind, f"{name}").plugin.distribution
        for kind, name in runtime.plan.names.items()
        if kind != "environment" or name != "LocalEnvironment"
    }
    assert case.distribution not in chosen.values(), chosen
    skipped = [f for f in _of(runtime.registry.failures, case.distribution) if f.entry]
    assert skipped, runtime.registry.failures
    assert {f.stage for f in skipped} == {case.stage}
    assert all(case.error in f.error for f in skipped), skipped
    for warning in caught:
        assert "skipped" in str(warning.message)
    runtime.launch()
    _train_one_step(runtime)
    runtime.teardown()


@pytest.mark.parametrize("installed", _case_params("auto"), indirect=True)
def test_selecting_the_broken_entry_by_name_names_the_plugin(installed: Installed) -> None:
    case = installed.case
    for target in case.selects:
        kind, name = target.split(":")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(PluginSelectionError) as info:
                Runtime(**{kind: name}, devices=1)  # type: ignore[arg-type]
        # 'auto' (the accelerator, when a strategy is named) skipped the case's other entry
        assert all(case.distribution in str(w.message) for w in caught), caught
        message = str(info.value)
        assert f"{kind} {name!r} from plugin" in message
        assert f"({case.distribution} 1.0.0)" in message
        assert case.error in message or "cannot be imported" in message or kind == "accelerator"
        assert info.value.__cause__ is not None or "not a switchyard" in message
        assert isinstance(info.value, PluginError)


def test_when_auto_has_nothing_left_the_error_lists_what_it_skipped(
    plugin_site: PluginSite,
) -> None:
    _raising_is_available(plugin_site)
    registry = PluginRegistry(plugins=["no:cpu", "no:example"])
    with (
        pytest.warns(RuntimeWarning, match="broken-available"),
        pytest.raises(SelectionError) as info,
    ):
        select(registry, accelerator="auto")
    message = str(info.value)
    assert "found no usable accelerator" in message
    assert (
        "accelerator 'flaky' from broken_available (broken-available 1.0.0) at is_available: "
        "OSError: driver not loaded" in message
    )
    # the CPU plugin is blocked, not missing: the message says so and does not ask to install it
    assert "cpu (switchyard-cpu 0.1.0)" in message
    assert "blocked by plugins=['no:...']" in message
    assert "Install the CPU plugin" not in message


# -- name conflicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("installed", ["duplicate-name"], indirect=True)
def test_a_duplicate_name_is_an_error_naming_both_distributions(installed: Installed) -> None:
    with pytest.raises(PluginConflictError) as info:
        Runtime(accelerator="cpu", devices=1)
    message = str(info.value)
    assert "switchyard-cpu 0.1.0" in message
    assert "broken-duplicate 1.0.0" in message
    runtime = Runtime(accelerator="broken-duplicate:cpu", strategy="switchyard:single_device")
    assert runtime.registry.get("accelerator", "broken-duplicate:cpu").plugin.distribution == (
        "broken-duplicate"
    )


@pytest.mark.parametrize("installed", ["shadowing-entry-point-name"], indirect=True)
def test_an_entry_point_named_cpu_does_not_hide_the_cpu_plugin(installed: Installed) -> None:
    runtime = Runtime(accelerator="cpu", devices=1)
    assert runtime.registry.get("accelerator", "cpu").plugin.distribution == "switchyard-cpu"
    names = set(runtime.registry.plugins)
    assert {"cpu@switchyard-cpu", "cpu@broken-shadow"} <= names
    assert "cpu" not in names  # neither gets the bare name: which one would depend on sys.path
    assert runtime.registry.get("accelerator", "shadow_cpu").plugin.name == "cpu@broken-shadow"
    # blocking the foreign distribution gives the name back
    registry = PluginRegistry(plugins=["no:broken-shadow"])
    assert registry.plugins["cpu"].distribution == "switchyard-cpu"
    assert [f for f in registry.failures if f.stage == "name"] == []


@pytest.mark.parametrize("how", ["environment", "code", "allow-list"])
def test_a_blocked_plugin_is_reported_as_blocked_not_missing(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    plugins: list[object] = []
    if how == "environment":
        monkeypatch.setenv("SWITCHYARD_BLOCK_PLUGINS", "switchyard-cpu")
        why = "blocked by SWITCHYARD_BLOCK_PLUGINS=switchyard-cpu"
    elif how == "code":
        plugins = ["no:cpu"]
        why = "blocked by plugins=['no:...']"
    else:
        monkeypatch.setenv("SWITCHYARD_PLUGINS", "ddp")
        why = "not in SWITCHYARD_PLUGINS=ddp"
    with pytest.raises(SelectionError) as info:
        Runtime(accelerator="cpu", devices=1, plugins=plugins)
    message = str(info.value)
    assert (
        f"comes with the switchyard-cpu plugin, which is installed but was not loaded: {why}"
        in (message)
    )
    assert "which is not installed" not in message
    assert "pip install" not in message


# -- lifecycle hooks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("installed", ["raising-runtime-started"], indirect=True)
def test_a_raising_runtime_started_stops_the_launch_and_tears_down(
    installed: Installed, strategy: str
) -> None:
    runtime = Runtime(accelerator="cpu", strategy=strategy, devices=1)
    with pytest.raises(PluginHookError) as info:
        runtime.launch()
    message = str(info.value)
    assert (
        "plugin broken_started (broken-started 1.0.0) raised in switchyard_runtime_started"
        in message
    )
    assert "RuntimeError: telemetry endpoint down" in message
    assert "runtime.launch() stopped and the runtime was torn down" in message
    assert "SWITCHYARD_BLOCK_PLUGINS=broken-started" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.failure.plugin.distribution == "broken-started"
    # the witness had started (it registered later, so it ran first) and was torn down; the
    # strategy's process group is gone
    assert [p.distribution for p in info.value.ran] == ["switchyard-witness"]
    assert installed.calls() == ["started", "teardown"]
    assert not torch.distributed.is_initialized()
    assert [f.stage for f in _of(runtime.registry.failures, "broken-started")] == [
        "switchyard_runtime_started"
    ]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("installed", ["raising-post-setup"], indirect=True)
def test_a_post_setup_failing_half_way_returns_no_module(
    installed: Installed, strategy: str
) -> None:
    runtime = Runtime(accelerator="cpu", strategy=strategy, devices=1)
    runtime.launch()
    try:
        model = nn.Linear(3, 1)
        with pytest.raises(PluginHookError) as info:
            runtime.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        message = str(info.value)
        assert "plugin post_a (broken-post-setup 1.0.0) raised in switchyard_post_setup" in message
        assert "ValueError: cannot compile this module" in message
        assert "runtime.setup() stopped and returned nothing" in message
        # the plugins that had run are named: the module was half set up
        assert [p.name for p in info.value.ran] == ["witness", "post_b"]
        assert (
            "had run for: witness (switchyard-witness 2.0.0), post_b (broken-post-setup" in message
        )
        assert isinstance(info.value.__cause__, ValueError)
        assert runtime._modules == []
    finally:
        _release_the_gil()  # DDP broadcast the module's parameters before the hooks ran
        runtime.teardown()
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("installed", ["raising-teardown"], indirect=True)
def test_a_raising_teardown_warns_naming_the_plugin_and_the_rest_tears_down(
    installed: Installed, strategy: str
) -> None:
    runtime = Runtime(accelerator="cpu", strategy=strategy, devices=1)
    runtime.launch()
    _train_one_step(runtime)
    with pytest.warns(RuntimeWarning, match=r"broken_teardown \(broken-teardown 1\.0\.0\)"):
        runtime.teardown()
    assert installed.calls() == ["started", "post_setup", "teardown"]
    assert not torch.distributed.is_initialized()


def test_lifecycle_hooks_may_not_be_wrappers(make_plugin: Callable[..., Any]) -> None:
    from switchyard import hookimpl

    plugin = make_plugin("wrapping")

    @hookimpl(wrapper=True)
    def switchyard_post_setup(setup: Any) -> Any:
        return (yield)

    plugin.switchyard_post_setup = switchyard_post_setup
    registry = PluginRegistry(plugins=[plugin])
    (failure,) = [f for f in registry.failures if f.plugin.name == "wrapping"]
    assert "'switchyard_post_setup' is marked as a wrapper" in failure.error


# -- all at once, in real processes --------------------------------------------------------------


def _run_cli(site: Path, *args: str, torch_autoload: bool = False) -> subprocess.Popen[str]:
    extra = {} if torch_autoload else {"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "switchyard", "plugins", *args],
        env=child_environment(extra, import_path=False, pythonpath=[site], plugin_switches=False),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=site,
    )


def test_every_case_at_once_through_the_real_command(plugin_site: PluginSite) -> None:
    _witness(plugin_site)
    for case in CASES:
        case.build(plugin_site)
    start = time.perf_counter()
    # two of the cases break 'import torch' itself (see Case.breaks_torch), in every program:
    # the listing runs with torch's device-extension autoload off, and without it the error
    # names the distributions instead of a traceback deep in importlib.metadata
    runs = {
        "text": _run_cli(plugin_site.root),
        "check": _run_cli(plugin_site.root, "--check", "--json"),
        "autoload": _run_cli(plugin_site.root, torch_autoload=True),
    }
    results = {key: run.communicate(timeout=180) for key, run in runs.items()}
    autoload = runs.pop("autoload")
    assert autoload.returncode == 1
    message = results["autoload"][1].strip().splitlines()[-1]
    assert message.startswith("ImportError: import torch failed while reading the entry points")
    for case in CASES:
        assert (case.distribution in message) == case.breaks_torch, (case.name, message)
    assert "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in message
    for key, run in runs.items():
        assert run.returncode == 0, (key, results[key][1])
        assert "Traceback" not in results[key][0] + results[key][1]
    text = results["text"][0]
    report = checked = json.loads(results["check"][0])
    for case in CASES:
        assert case.distribution in text, case.name
        for expected in case.shown:
            assert expected in text, (case.name, expected)
        if case.found_by == "discovery":
            assert any(
                f["distribution"] == case.distribution and f["stage"] == case.stage
                for f in report["failures"]
            ), case.name
        if case.check_shown:
            reasons = " ".join(str(e["reason"]) for e in checked["entries"])
            assert case.check_shown[-1] in reasons, case.name
    rows = {(e["kind"], e["name"], e["distribution"]): e for e in report["entries"]}
    assert rows["accelerator", "witness_cpu", "switchyard-witness"]["usable"] is True
    assert rows["strategy", "single_device", "switchyard"]["usable"] is True
    # one process of the whole site, the slow import included, in a bounded time
    assert time.perf_counter() - start < 120

    # and in this process, with every case installed, a Runtime still trains (the plugins whose
    # lifecycle hooks raise are blocked: they would stop any run, as they should)
    reset_default_registry()
    blocked = [f"no:{c.distribution}" for c in CASES if c.found_by == "lifecycle"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runtime = Runtime(
            accelerator=QUALIFIED["cpu"], strategy=QUALIFIED["single_device"], plugins=blocked
        )
        runtime.launch()
        _train_one_step(runtime)
        runtime.teardown()


@pytest.mark.skipif(not STRESS, reason="SWITCHYARD_STRESS=1 runs each case in its own process")
@pytest.mark.parametrize("name", _case_params())
def test_each_case_alone_through_the_real_command(name: str, plugin_site: PluginSite) -> None:
    _witness(plugin_site)
    case = BY_NAME[name]
    case.build(plugin_site)
    run = _run_cli(plugin_site.root, torch_autoload=not case.breaks_torch)
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    assert "Traceback" not in out + err
    assert case.distribution in out
    for expected in case.shown:
        assert expected in out
