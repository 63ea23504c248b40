"""Entry checks: every entry of the plugins under test is well-formed, importable, described and
consistent, and discovering the plugin imports nothing heavy. No hardware is needed."""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from switchyard.accelerator import Accelerator
from switchyard.entries import _NAME_PATTERN, Entry, StrategyEntry
from switchyard.environment import ClusterEnvironment
from switchyard.parallel import ParallelStrategy
from switchyard.precision import Precision
from switchyard.registry import PluginInfo, Registration
from switchyard.strategy import Strategy
from switchyard.testing import discovery, subprocesses
from switchyard.testing.config import KitConfig, describe
from switchyard.testing.plugin import kit_of
from switchyard.testing.suite import fail

pytestmark = pytest.mark.switchyard_conformance("entries")

INTERFACES: dict[str, type] = {
    "accelerator": Accelerator,
    "strategy": Strategy,
    "precision": Precision,
    "environment": ClusterEnvironment,
}

DISCOVERY_TIMEOUT = 120.0

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    kit = kit_of(metafunc.config)
    if "entry" in metafunc.fixturenames:
        entries = kit.entries_under_test()
        ids = [f"{r.kind}:{r.entry.name}" for r in entries]
        metafunc.parametrize("entry", entries, ids=ids)
    if "plugin" in metafunc.fixturenames:
        plugins = kit.plugins_under_test()
        metafunc.parametrize("plugin", plugins, ids=[p.name for p in plugins])


def _fail_if(registration: Registration, problems: list[str]) -> None:
    if problems:
        fail(f"{describe(registration)}: {'; '.join(problems)}")


def test_name(entry: Registration, switchyard_kit: KitConfig) -> None:
    """The name and aliases are valid, distinct, and registered once by the plugin."""
    problems = []
    names = entry.entry.names
    for name in names:
        if not isinstance(name, str) or not _NAME_PATTERN.match(name):
            problems.append(
                f"name {name!r} is not valid: use lower-case letters, digits, '_', '-' and '.'"
            )
    if len(set(names)) != len(names):
        problems.append(f"its aliases repeat a name: {list(names)}")
    twins = [
        r
        for r in switchyard_kit.registry.registrations(entry.kind)
        if r.plugin.name == entry.plugin.name and r is not entry and set(r.entry.names) & set(names)
    ]
    if twins:
        clash = sorted(set(twins[0].entry.names) & set(names))
        problems.append(f"the plugin registers {entry.kind} {clash[0]!r} more than once")
    _fail_if(entry, problems)


def _load(entry: Registration) -> Any:
    missing = entry.entry.missing_requirements()
    if missing:
        pytest.skip(
            f"{describe(entry)} needs {', '.join(missing)}, which is not installed here; its "
            "factory cannot be imported without it"
        )
    try:
        return entry.entry.load()
    except Exception as error:
        fail(
            f"{describe(entry)}: factory {entry.entry.factory!r} cannot be imported: "
            f"{type(error).__name__}: {error}"
        )


def test_factory(entry: Registration) -> None:
    """The factory imports, builds the right kind of object, and accepts the entry's
    ``init_args``."""
    factory = _load(entry)
    problems = []
    if not callable(factory):
        problems.append(
            f"factory {entry.entry.factory!r} is a {type(factory).__name__}, not callable"
        )
    elif inspect.isclass(factory):
        interface = INTERFACES[entry.kind]
        if not issubclass(factory, interface):
            problems.append(
                f"factory {factory.__qualname__} is not a subclass of "
                f"switchyard.{interface.__name__}"
            )
        elif inspect.isabstract(factory):
            missing = sorted(getattr(factory, "__abstractmethods__", ()))
            problems.append(
                f"factory {factory.__qualname__} leaves abstract methods unimplemented: "
                f"{', '.join(missing)}"
            )
    if callable(factory):
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            try:
                signature.bind_partial(**entry.entry.init_args)
            except TypeError as error:
                problems.append(
                    f"init_args {dict(entry.entry.init_args)} do not fit the factory's "
                    f"parameters {signature}: {error}"
                )
    _fail_if(entry, problems)


def test_description(entry: Registration) -> None:
    """A one-line description is present (``switchyard plugins`` shows it)."""
    text = entry.entry.description
    if not isinstance(text, str) or not text.strip():
        _fail_if(
            entry, ["has no description; 'switchyard plugins' shows one line next to the name"]
        )
    elif "\n" in text.strip():
        _fail_if(entry, [f"description must be one line, got {text!r}"])


def _overrides(cls: type, name: str) -> bool:
    return inspect.getattr_static(cls, name, None) is not inspect.getattr_static(Strategy, name)


def test_compatibility(entry: Registration) -> None:
    """What the entry declares (priority, requirements, accelerators, precisions, distributed)
    is well-formed and agrees with its class."""
    declared: Entry = entry.entry
    problems = []
    if isinstance(declared.priority, bool) or not isinstance(declared.priority, int):
        problems.append(f"priority {declared.priority!r} must be an integer")
    for module in declared.requires:
        if not isinstance(module, str) or not _MODULE_NAME.match(module):
            problems.append(f"requires names {module!r}, which is not a module name")
    bad_keys = [k for k in declared.init_args if not isinstance(k, str)]
    if bad_keys:
        problems.append(f"init_args keys must be strings, got {bad_keys!r}")
    for attribute in ("accelerators", "precisions"):
        value = getattr(declared, attribute, None)
        if value is None:
            continue
        if not value:
            problems.append(
                f"declares {attribute}=() so nothing can ever select it; use None for any"
            )
        if len(set(value)) != len(value):
            problems.append(f"{attribute} repeats a name: {list(value)}")
        invalid = [v for v in value if not _NAME_PATTERN.match(v)]
        if invalid:
            problems.append(f"{attribute} holds names that no entry can have: {invalid}")
    if isinstance(declared, StrategyEntry):
        distributed: Any = declared.distributed
        if not isinstance(distributed, bool):
            problems.append(f"distributed={distributed!r} must be True or False")
        cls = None
        if not declared.missing_requirements():
            try:
                cls = declared.load()
            except Exception:
                cls = None  # test_factory reports it
        if inspect.isclass(cls) and issubclass(cls, Strategy):
            if declared.distributed and not (
                _overrides(cls, "launcher") and _overrides(cls, "world_size")
            ):
                problems.append(
                    f"declares distributed=True, but {cls.__qualname__} keeps Strategy's "
                    "single-process launcher or world_size, so it cannot start one process "
                    "per device"
                )
            if not declared.distributed and issubclass(cls, ParallelStrategy):
                problems.append(
                    f"declares distributed=False, but {cls.__qualname__} is a ParallelStrategy "
                    "(one process per device); strategy='auto' would pick it for one device"
                )
    _fail_if(entry, problems)


def _top(module: str) -> str:
    return module.split(":")[0].split(".")[0]


@pytest.fixture(scope="module")
def discoveries(
    switchyard_kit: KitConfig, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocesses.Finished]:
    """Each installed plugin under test discovered alone in a fresh interpreter, in parallel."""
    source = Path(discovery.__file__).read_text(encoding="utf-8")
    folder = tmp_path_factory.mktemp("switchyard-discovery")
    names = [p.name for p in switchyard_kit.plugins_under_test() if p.source != "explicit"]

    # without torch's device-extension autoload: an out-of-tree backend that `import torch`
    # loads is neither counted against the plugin nor hides what the plugin imports
    env = subprocesses.child_environment({discovery.AUTOLOAD_VARIABLE: "0"})

    def measure(name: str) -> subprocesses.Finished:
        return subprocesses.run(
            [sys.executable, "-c", source, name],
            timeout=DISCOVERY_TIMEOUT,
            log=folder / f"{name}.log",
            env=env,
            cwd=folder,
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(names), 1)) as pool:
        return dict(zip(names, pool.map(measure, names), strict=True))


def test_discovery_is_light(
    plugin: PluginInfo,
    switchyard_kit: KitConfig,
    discoveries: dict[str, subprocesses.Finished],
    record_property: Any,
) -> None:
    """Loading the plugin and calling its registration hooks imports nothing outside its own
    package and switchyard (in particular no engine it ``requires``), and no hook fails;
    measured with torch's device-extension autoload off (``TORCH_DEVICE_BACKEND_AUTOLOAD=0``)."""
    if plugin.source == "explicit":
        pytest.skip(
            f"plugin {plugin.name} was passed explicitly; only installed plugins are discovered"
        )
    finished = discoveries[plugin.name]
    if finished.returncode != 0:
        fail(
            f"discovering plugin {plugin.describe()} alone {finished.describe()}:\n"
            f"{finished.tail()}"
        )
    result = json.loads(finished.output.strip().splitlines()[-1])
    own = "switchyard" if plugin.source == "builtin" else _top(plugin.target or plugin.name)
    entries = [r for r in switchyard_kit.entries_under_test() if r.plugin.name == plugin.name]
    required = {_top(m) for r in entries for m in r.entry.requires}
    new = result["new_modules"]
    engines = [m for m in new if _top(m) in required or _top(m) in discovery.HEAVY_ENGINES]
    foreign = [m for m in new if _top(m) not in (own, "switchyard")]
    implementations = sorted(
        {
            r.entry.factory.partition(":")[0]
            for r in entries
            if isinstance(r.entry.factory, str) and r.entry.factory.partition(":")[0] in new
        }
    )
    record_property("discovery_seconds", round(result["seconds"], 4))
    record_property("torch_device_backend_autoload", result["torch_device_backend_autoload"])
    record_property("torch_backends_not_loaded", result["torch_backends_not_loaded"])
    record_property("implementation_modules_imported_at_discovery", implementations)
    problems = []
    if result["failures"]:
        problems.append(f"its hooks failed: {'; '.join(result['failures'])}")
    if engines:
        problems.append(
            f"discovery imported {', '.join(sorted(engines)[:10])}, an engine it only requires "
            "when selected"
        )
    elif foreign:
        shown = ", ".join(foreign[:10]) + (
            f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
        )
        problems.append(
            f"discovery imported {len(foreign)} module(s) outside its package {own!r} and "
            f"switchyard: {shown}"
        )
    if problems:
        fail(
            f"plugin {plugin.describe()}: {'; '.join(problems)}. Registration hooks must stay "
            "cheap: name implementations as 'module:attr' strings, keep the package "
            "__init__ light, and import engines inside methods."
        )
