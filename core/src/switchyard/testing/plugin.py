"""The pytest plugin: options, collecting the kit's check modules, and the report.

Enabled with ``-p switchyard.testing`` (or ``pytest_plugins = ["switchyard.testing"]`` in a
root ``conftest.py``). Without a ``--switchyard-accelerator``, ``--switchyard-strategy`` or
``--switchyard-precision`` option it does nothing, so it may stay enabled in a project's
configuration. With one, pytest also collects the check modules in
``switchyard/testing/suite/``; when no test paths were given on the command line, it collects
only them (a project's ``testpaths`` are not run).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from switchyard.testing.config import DEFAULT_TIMEOUT, FAMILIES, KitConfig, KitUsageError
from switchyard.testing.report import MARKER, ConformanceReport

SUITE_DIR = Path(__file__).resolve().parent / "suite"
"""The kit's check modules; their names do not match ``test_*.py``, so pytest collects them only
through this plugin, and only the families the selection asks for."""

KIT_KEY = pytest.StashKey[KitConfig]()

NOT_APPLICABLE = "switchyard_not_applicable"
"""The marker name for a parametrization a selection leaves empty (an accelerator that claims no mixed
precision has no autocast check): such items are deselected, not skipped, so that they never
count as checks that could not run."""
REPORT_KEY = pytest.StashKey[ConformanceReport]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("switchyard", "switchyard conformance kit")
    group.addoption(
        "--switchyard-accelerator",
        metavar="NAME",
        help="check this accelerator (a name from 'switchyard plugins', or PLUGIN:NAME)",
    )
    group.addoption(
        "--switchyard-strategy",
        metavar="NAME",
        help="check this strategy on --switchyard-devices processes",
    )
    group.addoption(
        "--switchyard-devices",
        metavar="N",
        help="processes for the strategy checks (default: 2 for a distributed strategy, else 1)",
    )
    group.addoption(
        "--switchyard-precision",
        action="append",
        default=[],
        metavar="NAME",
        help="check this precision (repeatable, or comma-separated); default: every installed "
        "precision the accelerator claims",
    )
    group.addoption(
        "--switchyard-report",
        metavar="PATH",
        help="write the JSON conformance report here",
    )
    group.addoption(
        "--switchyard-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long a strategy job may take before it is killed (default {DEFAULT_TIMEOUT:g})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(family): a check of the switchyard conformance kit"
    )
    config.addinivalue_line(
        "markers", f"{NOT_APPLICABLE}: a kit check the selection does not apply to"
    )
    option = config.option
    selected = (
        option.switchyard_accelerator or option.switchyard_strategy or option.switchyard_precision
    )
    if not selected:
        if option.switchyard_report or option.switchyard_devices:
            raise pytest.UsageError(
                "--switchyard-report and --switchyard-devices need a selection: "
                "--switchyard-accelerator, --switchyard-strategy or --switchyard-precision"
            )
        return
    try:
        kit = KitConfig(
            accelerator=option.switchyard_accelerator,
            strategy=option.switchyard_strategy,
            devices=option.switchyard_devices,
            precisions=option.switchyard_precision,
            report=config.invocation_params.dir / option.switchyard_report
            if option.switchyard_report
            else None,
            timeout=option.switchyard_timeout,
        )
    except KitUsageError as error:
        raise pytest.UsageError(f"switchyard conformance kit: {error}") from None
    config.stash[KIT_KEY] = kit
    _collect_suite(config)
    report = ConformanceReport(kit, kit.report_path, list(config.invocation_params.args))
    config.stash[REPORT_KEY] = report
    config.pluginmanager.register(report, "switchyard-conformance-report")


def _inside_suite(config: pytest.Config, arg: str) -> bool:
    path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
    return path == SUITE_DIR or SUITE_DIR in path.parents or path in SUITE_DIR.parents


def _collect_suite(config: pytest.Config) -> None:
    """Add the suite to what pytest collects: beside the paths given on the command line, or
    instead of ``testpaths``/the current directory when none was given."""
    if any(_inside_suite(config, arg) for arg in config.args):
        return
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.append(str(SUITE_DIR))
    else:
        config.args[:] = [str(SUITE_DIR)]


def _family(path: Path) -> str | None:
    """The family of a kit check module, ``None`` for any other path."""
    if path.suffix != ".py" or path.stem not in FAMILIES or path.resolve().parent != SUITE_DIR:
        return None
    return path.stem


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    family = _family(collection_path)
    if family is None:
        return None
    kit = config.stash.get(KIT_KEY, None)
    # a family the selection does not ask for is never collected, whatever python_files says
    return True if kit is None or family not in kit.families else None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if _family(file_path) is None or parent.config.stash.get(KIT_KEY, None) is None:
        return None
    patterns = parent.config.getini("python_files")
    if parent.session.isinitpath(file_path) or any(
        fnmatch.fnmatch(file_path.name, p) for p in patterns
    ):
        return None  # pytest's own python plugin collects it
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the kit's inapplicable items; run its families in order (entries, accelerator,
    precision, strategy) after the session's other tests."""
    if config.stash.get(KIT_KEY, None) is None:
        return
    inapplicable = [item for item in items if item.get_closest_marker(NOT_APPLICABLE)]
    if inapplicable:
        config.hook.pytest_deselected(items=inapplicable)
        dropped = {id(item) for item in inapplicable}
        items[:] = [item for item in items if id(item) not in dropped]
    order = {family: index for index, family in enumerate(FAMILIES)}

    def family(item: pytest.Item) -> int:
        marker = item.get_closest_marker(MARKER)
        return order.get(str(marker.args[0]), -1) if marker and marker.args else -1

    items[:] = sorted(items, key=family)


def kit_of(config: pytest.Config) -> KitConfig:
    """The session's :class:`KitConfig`; the check modules are only collected when there is one."""
    return config.stash[KIT_KEY]


@pytest.fixture(scope="session")
def switchyard_kit(request: pytest.FixtureRequest) -> KitConfig:
    """The kit's selection (:class:`~switchyard.testing.config.KitConfig`)."""
    kit = request.config.stash.get(KIT_KEY, None)
    if kit is None:
        pytest.skip("the switchyard conformance kit was not given anything to check")
    return kit
