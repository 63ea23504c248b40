"""Plugin discovery through real installed-distribution metadata, and entry validation.

Each test writes ``*.dist-info`` folders (METADATA and an ``entry_points.txt`` with a
``[switchyard]`` group) and plugin modules into a throwaway folder on ``sys.path``, then builds a
``PluginRegistry()``, which reads ``importlib.metadata.entry_points`` as it does for pip-installed
plugins. The real ``switchyard-cpu`` distribution of the virtual environment is discovered too.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from switchyard import (
    AcceleratorEntry,
    PluginConflictError,
    PrecisionEntry,
    SelectionError,
    StrategyEntry,
)
from switchyard.builtin.precisions import TruePrecision
from switchyard.cli import plugins_report
from switchyard.entries import EntryError
from switchyard.registry import PluginRegistry
from switchyard.selection import select

HEADER = (
    "from switchyard import hookimpl, AcceleratorEntry, StrategyEntry, PrecisionEntry, "
    "EnvironmentEntry\n"
)


def accelerator_plugin(site, base, name, description=""):
    """A plugin module registering one accelerator whose implementation is never loaded here."""
    return site.module(
        base,
        HEADER
        + f"""
@hookimpl
def switchyard_accelerators():
    yield AcceleratorEntry(
        name={name!r}, factory="{site.name(base)}_impl:Accel", description={description!r}
    )
""",
    )


def failures_of(registry, plugin):
    return [f for f in registry.failures if f.plugin.name == plugin]


# -- discovery ----------------------------------------------------------------------------------


def test_third_party_plugin_is_discovered_with_distribution_and_version(plugin_site):
    module = accelerator_plugin(plugin_site, "acme_plugin", "npu", "Acme NPU through torch_acme")
    plugin_site.distribution("acme-accel", "2.3.4", {"acme": module})

    registry = PluginRegistry()

    info = registry.plugins["acme"]
    assert (info.source, info.distribution, info.version, info.target) == (
        "entry-point",
        "acme-accel",
        "2.3.4",
        module,
    )
    assert info.describe() == "acme (acme-accel 2.3.4)"
    registration = registry.get("accelerator", "npu")
    assert registration is not None
    assert registration.plugin == info
    assert registration.entry.description == "Acme NPU through torch_acme"
    # the really installed CPU plugin is found by the same mechanism
    assert {"cpu", "npu"} <= set(registry.names("accelerator"))
    assert registry.get("accelerator", "cpu").plugin.distribution == "switchyard-cpu"
    assert failures_of(registry, "acme") == []


def test_plugin_that_fails_to_import_is_recorded_and_others_still_work(plugin_site):
    broken = plugin_site.module("broken_plugin", "raise ImportError('needs libacme.so')\n")
    exits = plugin_site.module("exiting_plugin", "raise SystemExit(3)\n")
    good = accelerator_plugin(plugin_site, "good_plugin", "npu")
    plugin_site.distribution("broken-dist", "0.1", {"broken": broken})
    plugin_site.distribution("exiting-dist", "0.2", {"exiting": exits})
    plugin_site.distribution("ghost-dist", "0.3", {"ghost": plugin_site.name("not_there")})
    plugin_site.distribution("good-dist", "1.0", {"good": good})

    registry = PluginRegistry()

    (failure,) = failures_of(registry, "broken")
    assert failure.stage == "import"
    assert "ImportError: needs libacme.so" in failure.error
    assert (failure.plugin.distribution, failure.plugin.version) == ("broken-dist", "0.1")
    assert "needs libacme.so" in failure.traceback
    (exited,) = failures_of(registry, "exiting")
    assert exited.stage == "import"
    assert "SystemExit" in exited.error
    (ghost,) = failures_of(registry, "ghost")
    assert ghost.stage == "import"
    assert "ModuleNotFoundError" in ghost.error
    for name in ("broken", "exiting", "ghost"):
        assert name not in registry.plugins
    assert registry.get("accelerator", "npu").plugin.name == "good"
    assert "cpu" in registry.names("accelerator")
    assert "32-true" in registry.names("precision")


def test_registration_hook_that_raises_is_recorded_and_other_hooks_still_work(plugin_site):
    flaky = plugin_site.module(
        "flaky_plugin",
        HEADER
        + """
@hookimpl
def switchyard_accelerators():
    raise RuntimeError("driver probe failed")

@hookimpl
def switchyard_precisions():
    yield PrecisionEntry(name="fp8-flaky", factory="flaky_impl:FP8")

@hookimpl
def switchyard_strategies():
    yield StrategyEntry(name="half-done", factory="flaky_impl:S")
    raise ValueError("second entry broke")
""",
    )
    good = accelerator_plugin(plugin_site, "good_plugin", "npu")
    plugin_site.distribution("flaky-dist", "0.9", {"flaky": flaky})
    plugin_site.distribution("good-dist", "1.0", {"good": good})

    registry = PluginRegistry()
    accelerators = registry.names("accelerator")
    strategies = registry.names("strategy")

    by_stage = {f.stage: f for f in failures_of(registry, "flaky")}
    assert set(by_stage) == {"switchyard_accelerators", "switchyard_strategies"}
    assert by_stage["switchyard_accelerators"].error == "RuntimeError: driver probe failed"
    assert by_stage["switchyard_accelerators"].plugin.distribution == "flaky-dist"
    assert "second entry broke" in by_stage["switchyard_strategies"].error
    # a hook that fails part-way registers nothing; the plugin's other hooks still count
    assert "half-done" not in strategies
    assert registry.get("precision", "fp8-flaky").plugin.name == "flaky"
    assert {"npu", "cpu"} <= set(accelerators)
    assert "single_device" in strategies
    assert failures_of(registry, "good") == []


def test_hook_returning_something_other_than_entries_is_recorded(plugin_site):
    odd = plugin_site.module(
        "odd_plugin",
        HEADER
        + """
@hookimpl
def switchyard_accelerators():
    return "npu"

@hookimpl
def switchyard_strategies():
    return [AcceleratorEntry(name="npu", factory="odd_impl:Accel")]

@hookimpl
def switchyard_precisions():
    return [PrecisionEntry(name="fp8-odd", factory="odd_impl:P"), 42]

@hookimpl
def switchyard_environments():
    return EnvironmentEntry(name="odd-cluster", factory="odd_impl:Env")
""",
    )
    plugin_site.distribution("odd-dist", "1.0", {"odd": odd})

    registry = PluginRegistry()
    for kind in ("accelerator", "strategy", "precision", "environment"):
        registry.registrations(kind)

    by_stage = {f.stage: f.error for f in failures_of(registry, "odd")}
    assert set(by_stage) == {
        "switchyard_accelerators",
        "switchyard_strategies",
        "switchyard_precisions",
    }
    assert (
        "must return AcceleratorEntry records, got str: 'npu'"
        in by_stage["switchyard_accelerators"]
    )
    assert (
        "must return StrategyEntry records, got AcceleratorEntry"
        in by_stage["switchyard_strategies"]
    )
    assert "got int: 42" in by_stage["switchyard_precisions"]
    assert "npu" not in registry.names("accelerator")
    assert "fp8-odd" not in registry.names("precision")
    # a single entry (not in a list) is accepted
    assert registry.get("environment", "odd-cluster").plugin.name == "odd"


def test_hook_yielding_a_malformed_entry_is_recorded(plugin_site):
    bad = plugin_site.module(
        "bad_plugin",
        HEADER
        + """
@hookimpl
def switchyard_accelerators():
    yield AcceleratorEntry(name="my npu", factory="bad_impl:Accel")
""",
    )
    plugin_site.distribution("bad-dist", "1.0", {"bad": bad})

    registry = PluginRegistry()
    assert "cpu" in registry.names("accelerator")

    (failure,) = failures_of(registry, "bad")
    assert failure.stage == "switchyard_accelerators"
    assert "EntryError" in failure.error
    assert "'my npu'" in failure.error


def test_two_distributions_with_one_plugin_name_keep_both_under_qualified_names(plugin_site):
    first = accelerator_plugin(plugin_site, "first_plugin", "npu")
    second = accelerator_plugin(plugin_site, "second_plugin", "tpu2")
    plugin_site.distribution("first-dist", "1.0", {"acme": first})
    plugin_site.distribution("second-dist", "1.0", {"acme": second})

    registry = PluginRegistry()

    # neither shadows the other, whichever sys.path lists first
    assert "acme" not in registry.plugins
    assert registry.plugins["acme@first-dist"].target == first
    assert registry.plugins["acme@second-dist"].target == second
    assert registry.get("accelerator", "npu").plugin.distribution == "first-dist"
    assert registry.get("accelerator", "tpu2").plugin.distribution == "second-dist"
    # qualified by the entry-point name, or by the distribution
    assert registry.get("accelerator", "second-dist:tpu2").plugin.distribution == "second-dist"
    assert registry.get("accelerator", "acme:tpu2").plugin.distribution == "second-dist"
    conflicts = [f for f in registry.failures if f.stage == "name"]
    assert {f.plugin.name for f in conflicts} == {"acme@first-dist", "acme@second-dist"}
    for failure in conflicts:
        assert "first-dist 1.0" in failure.error
        assert "second-dist 1.0" in failure.error


# -- conflicts ----------------------------------------------------------------------------------


@pytest.fixture
def conflicting(plugin_site):
    """Two installed distributions that both register accelerator ``npu``."""
    acme = accelerator_plugin(plugin_site, "acme_plugin", "npu", "Acme NPU")
    other = accelerator_plugin(plugin_site, "other_plugin", "npu", "Other NPU")
    plugin_site.distribution("acme-accel", "1.0.0", {"acme": acme})
    plugin_site.distribution("other-accel", "2.0.0", {"other": other})
    return plugin_site


def test_conflicting_names_raise_an_error_naming_both_plugins(conflicting):
    registry = PluginRegistry()

    with pytest.raises(PluginConflictError) as info:
        registry.get("accelerator", "npu")

    message = str(info.value)
    for expected in (
        "acme (acme-accel 1.0.0)",
        "other (other-accel 2.0.0)",
        "Acme NPU",
        "Other NPU",
        "'acme:npu'",
        "'other:npu'",
        "SWITCHYARD_BLOCK_PLUGINS",
        "no:",
    ):
        assert expected in message
    assert isinstance(info.value, SelectionError)
    assert set(registry.conflicts("accelerator")) == {"npu"}
    # selection surfaces the same error
    with pytest.raises(PluginConflictError, match="acme-accel"):
        select(registry, accelerator="npu")


def test_qualified_name_picks_one_of_the_conflicting_plugins(conflicting):
    registry = PluginRegistry()

    assert registry.get("accelerator", "acme:npu").plugin.distribution == "acme-accel"
    assert registry.get("accelerator", "other:npu").plugin.distribution == "other-accel"
    assert registry.get("accelerator", " OTHER:NPU ").plugin.name == "other"
    assert registry.get("accelerator", "nobody:npu") is None


@pytest.mark.parametrize(
    ("how", "value"),
    [
        ("block", "other"),
        ("block", "other-accel"),
        ("block", "Other_Accel"),  # distribution names compare as pip compares them
        ("env", "other"),
        ("env", "something-else, other-accel"),
        ("no", "other"),
        ("no", "OTHER"),
    ],
)
def test_blocking_one_plugin_resolves_the_conflict(conflicting, monkeypatch, how, value):
    if how == "block":
        registry = PluginRegistry(block=[value])
    elif how == "env":
        monkeypatch.setenv("SWITCHYARD_BLOCK_PLUGINS", value)
        registry = PluginRegistry()
    else:
        registry = PluginRegistry(plugins=[f"no:{value}"])

    assert "other" not in registry.plugins
    assert registry.get("accelerator", "npu").plugin.name == "acme"
    assert registry.conflicts("accelerator") == {}
    assert failures_of(registry, "other") == []


def test_a_plain_string_in_plugins_is_refused():
    with pytest.raises(TypeError, match="no:NAME"):
        PluginRegistry(plugins=["switchyard_cpu.plugin"])


def test_explicit_plugin_is_registered_and_wins_a_conflict(conflicting, make_plugin):
    vendor = make_plugin(
        "vendor_npu",
        accelerators=[AcceleratorEntry(name="npu", factory="vendor.impl:NPU")],
        precisions=[PrecisionEntry(name="fp8-vendor", factory=TruePrecision)],
    )

    registry = PluginRegistry(plugins=[vendor])

    assert registry.plugins["vendor_npu"].source == "explicit"
    chosen = registry.get("accelerator", "npu")
    assert (chosen.plugin.name, chosen.entry.factory) == ("vendor_npu", "vendor.impl:NPU")
    assert registry.get("precision", "fp8-vendor").plugin.name == "vendor_npu"
    # the installed ones are still reachable by qualified name
    assert registry.get("accelerator", "acme:npu").plugin.name == "acme"
    assert len(registry.conflicts("accelerator")["npu"]) == 3


# -- autoload switches --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_disabling_autoload_loads_no_entry_point(plugin_site, make_plugin, monkeypatch, value):
    module = accelerator_plugin(plugin_site, "acme_plugin", "npu")
    plugin_site.distribution("acme-accel", "1.0", {"acme": module})
    explicit = make_plugin("explicit_plugin", accelerators=[AcceleratorEntry("mine", "m:A")])
    monkeypatch.setenv("SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD", value)

    registry = PluginRegistry(plugins=[explicit])

    assert registry.autoload is False
    assert set(registry.plugins) == {"builtin", "explicit_plugin"}
    assert registry.names("accelerator") == ["mine"]
    assert "single_device" in registry.names("strategy")
    assert module not in sys.modules
    assert registry.failures == []


def test_autoload_false_argument_loads_no_entry_point(plugin_site):
    module = accelerator_plugin(plugin_site, "acme_plugin", "npu")
    plugin_site.distribution("acme-accel", "1.0", {"acme": module})

    registry = PluginRegistry(autoload=False)

    assert set(registry.plugins) == {"builtin"}
    assert registry.names("accelerator") == []


@pytest.fixture
def two_plugins(plugin_site):
    acme = accelerator_plugin(plugin_site, "acme_plugin", "npu")
    other = accelerator_plugin(plugin_site, "other_plugin", "gpu2")
    plugin_site.distribution("acme-accel", "1.0", {"acme": acme})
    plugin_site.distribution("other-accel", "1.0", {"other": other})
    return acme, other


def test_allow_list_loads_only_the_named_plugins(two_plugins, monkeypatch):
    _, other = two_plugins
    monkeypatch.setenv("SWITCHYARD_PLUGINS", "acme")

    registry = PluginRegistry()

    assert set(registry.plugins) == {"builtin", "acme"}
    assert registry.names("accelerator") == ["npu"]
    assert other not in sys.modules
    assert registry.allowed == ("acme",)
    assert registry.failures == []


def test_allow_list_accepts_distribution_names_and_overrides_disabled_autoload(
    two_plugins, monkeypatch
):
    monkeypatch.setenv("SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("SWITCHYARD_PLUGINS", "other-accel, switchyard-cpu")

    registry = PluginRegistry()

    assert set(registry.plugins) == {"builtin", "other", "cpu"}
    assert registry.names("accelerator") == ["cpu", "gpu2"]


def test_allow_listed_name_that_is_not_installed_is_a_failure(two_plugins, monkeypatch):
    monkeypatch.setenv("SWITCHYARD_PLUGINS", "acme,nosuch")

    registry = PluginRegistry()

    assert set(registry.plugins) == {"builtin", "acme"}
    (failure,) = failures_of(registry, "nosuch")
    assert failure.stage == "import"
    assert "SWITCHYARD_PLUGINS names 'nosuch'" in failure.error
    assert "acme" in failure.error  # lists what is installed


def test_allow_argument_overrides_the_environment(two_plugins, monkeypatch):
    monkeypatch.setenv("SWITCHYARD_PLUGINS", "acme")

    registry = PluginRegistry(allow=["other"])

    assert set(registry.plugins) == {"builtin", "other"}


# -- listing stays lazy -------------------------------------------------------------------------


def test_listing_entries_imports_no_plugin_implementation(plugin_site):
    impl = plugin_site.module(
        "lazy_impl",
        """
        from switchyard.builtin.single_device import SingleDeviceStrategy as Strategy
        from switchyard.builtin.precisions import TruePrecision as Precision
        from switchyard.builtin.environments import LocalEnvironment as Environment
        """,
    )
    accel_impl = plugin_site.module(
        "lazy_accel_impl",
        """
        from switchyard import Accelerator

        class Accel(Accelerator):
            device_type = "lazy"

            @classmethod
            def is_available(cls):
                return False

            @classmethod
            def device_count(cls):
                return 0
        """,
    )
    plugin = plugin_site.module(
        "lazy_plugin",
        HEADER
        + f"""
@hookimpl
def switchyard_strategies():
    yield StrategyEntry(name="lazy-strategy", factory="{impl}:Strategy", requires=("{impl}",))

@hookimpl
def switchyard_precisions():
    yield PrecisionEntry(name="lazy-precision", factory="{impl}:Precision")

@hookimpl
def switchyard_environments():
    yield EnvironmentEntry(name="lazy-environment", factory="{impl}:Environment")

@hookimpl
def switchyard_accelerators():
    yield AcceleratorEntry(name="lazy-accelerator", factory="{accel_impl}:Accel")
""",
    )
    plugin_site.distribution("lazy-dist", "1.0", {"lazy": plugin})

    registry = PluginRegistry()
    for kind in ("accelerator", "strategy", "precision", "environment"):
        assert f"lazy-{kind}" in registry.names(kind)
        registry.conflicts(kind)
    assert registry.get("strategy", "lazy-strategy").entry.missing_requirements() == ()
    assert plugin in sys.modules
    assert impl not in sys.modules
    assert accel_impl not in sys.modules

    report = plugins_report(registry)

    rows = {row["name"]: row for row in report["entries"]}
    assert rows["lazy-strategy"]["usable"] is True
    assert rows["lazy-precision"]["distribution"] == "lazy-dist"
    assert impl not in sys.modules
    # accelerators are asked whether a device is present, so their class is imported: the
    # sentinel technique does see an import when one happens
    assert rows["lazy-accelerator"]["usable"] is False
    assert accel_impl in sys.modules
    # and the strategy really is importable when selected
    assert registry.get("strategy", "lazy-strategy").entry.load().__name__ == (
        "SingleDeviceStrategy"
    )
    assert impl in sys.modules


# -- entries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "  ", "-cpu", "_cpu", ".cpu", "my npu", "acme:npu", "npü"])
def test_entry_with_a_bad_name_is_refused(name):
    with pytest.raises(EntryError, match="is not valid"):
        AcceleratorEntry(name=name, factory="pkg.mod:Cls")


def test_entry_with_a_bad_alias_is_refused():
    with pytest.raises(EntryError, match="'b f16'"):
        PrecisionEntry(name="bf16-mixed", factory="pkg.mod:Cls", aliases=("b f16",))


def test_entry_names_and_aliases_are_normalised():
    entry = StrategyEntry(
        name=" DDP_Spawn ", factory="pkg.mod:Cls", aliases=(" Spawn ",), accelerators=("CPU",)
    )
    assert entry.name == "ddp_spawn"
    assert entry.names == ("ddp_spawn", "spawn")
    assert entry.accelerators == ("cpu",)
    precision = PrecisionEntry(name="x", factory="pkg.mod:Cls", accelerators=["CUDA"])
    assert precision.accelerators == ("cuda",)


@pytest.mark.parametrize("name", [None, 3, ("cpu",)])
def test_entry_name_that_is_not_a_string_is_refused(name):
    with pytest.raises(EntryError, match="name must be a string"):
        AcceleratorEntry(name=name, factory="pkg.mod:Cls")


def test_a_single_string_where_a_tuple_is_expected_is_one_item():
    # ("bf16") without its comma is the string "bf16", not the letters b, f, 1, 6
    precision = PrecisionEntry(
        name="bf16-mixed", factory="pkg.mod:Cls", aliases="bf16", accelerators="CUDA"
    )
    assert precision.aliases == ("bf16",)
    assert precision.accelerators == ("cuda",)
    strategy = StrategyEntry(
        name="xla", factory="pkg.mod:Cls", requires="torch_xla", accelerators="xla"
    )
    assert strategy.requires == ("torch_xla",)
    assert strategy.accelerators == ("xla",)


@pytest.mark.parametrize("factory", ["pkg.mod", "pkg.mod:", ":Cls", "", 42, None])
def test_entry_with_a_bad_factory_is_refused(factory):
    with pytest.raises(EntryError, match="factory"):
        StrategyEntry(name="ok", factory=factory)


def test_entry_is_frozen_and_its_init_args_read_only():
    args = {"dtype": "float64"}
    entry = PrecisionEntry(name="x", factory=TruePrecision, init_args=args)
    args["dtype"] = "float16"

    assert entry.init_args["dtype"] == "float64"
    with pytest.raises(TypeError):
        entry.init_args["dtype"] = "bfloat16"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.name = "y"  # type: ignore[misc]


def test_entry_create_merges_init_args_with_caller_arguments():
    entry = PrecisionEntry(
        name="x",
        factory="switchyard.builtin.precisions:TruePrecision",
        init_args={"dtype": "float64"},
    )
    assert entry.load() is TruePrecision
    assert entry.create().param_dtype == torch.float64
    assert entry.create(dtype="bfloat16").param_dtype == torch.bfloat16
    nested = StrategyEntry(name="n", factory="switchyard.registry:PluginRegistry.names")
    assert nested.load() is PluginRegistry.names


def test_missing_requirements_imports_nothing(plugin_site):
    present = plugin_site.module("present_engine", "raise AssertionError('imported!')\n")
    entry = AcceleratorEntry(
        name="npu",
        factory=f"{present}:Accel",
        requires=(present, "no_such_engine_xyz", "no_such_pkg_xyz.sub"),
    )

    assert entry.missing_requirements() == ("no_such_engine_xyz", "no_such_pkg_xyz.sub")
    assert present not in sys.modules
    assert (
        AcceleratorEntry(name="cpu", factory="a:b", requires=("torch",)).missing_requirements()
        == ()
    )


# -- reading distributions cheaply ---------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        "Metadata-Version: 2.1\nName: Acme_Accel\nVersion: 1.2.3\n\nName: not-this\n",
        # no Version header: the full parse decides (and finds none)
        "Metadata-Version: 2.1\nName: Acme_Accel\n\nVersion: 9.9\n",
    ],
)
def test_name_and_version_read_from_the_metadata_head(tmp_path, metadata):
    """Discovery reads a plugin distribution's Name and Version from the head of its METADATA
    (the body, a long description, may contain anything); anything unusual goes through
    importlib.metadata's own parser, so both readings agree."""
    import importlib.metadata

    from switchyard.registry import _name_and_version, _read_dist_file

    info = tmp_path / "acme_accel-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(metadata)
    dist = importlib.metadata.PathDistribution(info)
    assert _name_and_version(dist) == (dist.metadata["Name"], dist.version)
    assert _read_dist_file(dist, "entry_points.txt") is None
    (info / "entry_points.txt").write_text("[switchyard]\nacme = acme.plugin\n")
    assert _read_dist_file(dist, "entry_points.txt") == dist.read_text("entry_points.txt")


def test_core_version_is_known_with_and_without_autoload():
    from importlib.metadata import version

    for autoload in (True, False):
        registry = PluginRegistry(autoload=autoload)
        assert registry.plugins["builtin"].version == version("switchyard")


def _odd_plugin_module() -> object:
    """A module holding every kind of object pluggy's lookup distinguishes."""
    import functools
    import types

    from switchyard import hookimpl

    module = types.ModuleType("odd_plugin_module")

    @hookimpl
    def switchyard_accelerators() -> list[object]:
        return []

    @hookimpl
    def plain_named() -> list[object]:  # a hookimpl under a name no spec has
        return []

    class switchyard_strategies:
        pass

    def no_entries() -> list[object]:
        return []

    module.__dict__.update(
        switchyard_accelerators=switchyard_accelerators,
        switchyard_precisions=staticmethod(hookimpl(no_entries)),
        switchyard_environments=functools.partial(no_entries),
        switchyard_loggers=len,  # a builtin
        switchyard_strategies=switchyard_strategies,
        plain_named=plain_named,
        number=3,
        bound=types.MethodType(hookimpl(lambda self: []), object()),
    )
    return module


def test_registration_shortcut_finds_exactly_what_pluggy_finds() -> None:
    """The registry's manager skips pluggy's static lookup for a module's names whose value
    cannot be a hook; on core's, every first-party plugin's and an odd module's names it must
    parse the very same hook implementations as pluggy's own manager."""
    import importlib
    import types

    import pluggy

    from switchyard import hookspecs
    from switchyard.registry import _PluginManager

    modules: list[object] = [_odd_plugin_module(), hookspecs]
    for name in ("switchyard.builtin", "switchyard_cpu.plugin", "switchyard_ddp.plugin"):
        modules.append(importlib.import_module(name))
    ours, theirs = _PluginManager("switchyard"), pluggy.PluginManager("switchyard")
    compared = 0
    for module in modules:
        assert isinstance(module, types.ModuleType)
        for name in dir(module):
            assert ours.parse_hookimpl_opts(module, name) == theirs.parse_hookimpl_opts(
                module, name
            ), (module.__name__, name)
            assert ours.parse_hookspec_opts(module, name) == theirs.parse_hookspec_opts(
                module, name
            ), (module.__name__, name)
            compared += theirs.parse_hookimpl_opts(module, name) is not None
    assert compared >= 8  # the odd module's three hooks and the real plugins' several
