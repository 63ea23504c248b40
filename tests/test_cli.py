"""``python -m switchyard plugins|env`` as a user runs them, in subprocesses of this interpreter.

Each command runs in a clean environment; ``plugins`` runs again with a throwaway folder on
``PYTHONPATH`` holding two extra installed distributions, one whose plugin module fails to import and one whose
strategy and precision implementations must not be imported by listing them. All subprocesses
start together, so the module costs about one interpreter start-up per CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from switchyard.testing.subprocesses import child_environment

COMMANDS = {
    "plugins": ["plugins"],
    "plugins-json": ["plugins", "--json"],
    "env": ["env"],
    "env-json": ["env", "--json"],
}
SITE_COMMANDS = ["plugins", "plugins-json"]
LAZY_IMPL = "cli_lazy_impl"


def _write_site(root: Path) -> Path:
    """The extra distributions; returns the marker file an import of the lazy impl would create."""
    marker = root / "lazy-impl-was-imported"
    (root / "cli_broken_plugin.py").write_text("raise ImportError('needs libbroken.so')\n")
    (root / f"{LAZY_IMPL}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
    )
    (root / "cli_lazy_plugin.py").write_text(
        textwrap.dedent(
            f"""
            from switchyard import hookimpl, PrecisionEntry, StrategyEntry

            @hookimpl
            def switchyard_strategies():
                yield StrategyEntry(name="lazy-strategy", factory="{LAZY_IMPL}:S",
                                    description="never imported by listing")

            @hookimpl
            def switchyard_precisions():
                yield PrecisionEntry(name="lazy-precision", factory="{LAZY_IMPL}:P")
            """
        )
    )
    for dist, plugin, module in (
        ("broken-vendor", "broken", "cli_broken_plugin"),
        ("lazy-vendor", "lazy", "cli_lazy_plugin"),
    ):
        info = root / f"{dist.replace('-', '_')}-0.5.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.5.0\n")
        (info / "entry_points.txt").write_text(f"[switchyard]\n{plugin} = {module}\n")
    return marker


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs[(setting, command)]`` is the finished process; setting is "clean" or "site"."""
    site = tmp_path_factory.mktemp("cli-site")
    workdir = tmp_path_factory.mktemp("cli-cwd")  # 'python -m' puts the cwd on sys.path
    marker = _write_site(site)
    processes = {}
    for setting, pythonpath, names in (
        ("clean", None, list(COMMANDS)),
        ("site", site, SITE_COMMANDS),
    ):
        for name in names:
            processes[setting, name] = subprocess.Popen(
                [sys.executable, "-m", "switchyard", *COMMANDS[name]],
                # what is installed (and the site), as for a user; 'env' reports SWITCHYARD_*
                env=child_environment(
                    {"SWITCHYARD_TEST_MARKER_VAR": "visible"},
                    import_path=False,
                    pythonpath=[pythonpath] if pythonpath is not None else [],
                    plugin_switches=False,
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=workdir,
            )
    results = {}
    for key, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        results[key] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    results["marker"] = marker
    return results


@pytest.mark.parametrize(
    ("setting", "command"),
    [("clean", name) for name in COMMANDS] + [("site", name) for name in SITE_COMMANDS],
)
def test_command_succeeds(runs, setting, command):
    result = runs[setting, command]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "Traceback" not in result.stderr


def _entries(report):
    return {(e["kind"], e["name"]): e for e in report["entries"]}


def test_plugins_json_lists_cpu_and_the_builtin_precisions(runs):
    report = json.loads(runs["clean", "plugins-json"].stdout)
    entries = _entries(report)

    cpu = entries["accelerator", "cpu"]
    assert (cpu["plugin"], cpu["distribution"], cpu["usable"]) == ("cpu", "switchyard-cpu", True)
    assert cpu["reason"] is None
    for name in ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"):
        precision = entries["precision", name]
        assert (precision["plugin"], precision["distribution"]) == ("builtin", "switchyard")
        assert precision["usable"] is True
    assert entries["precision", "bf16-mixed"]["aliases"] == ["bf16"]
    assert entries["strategy", "single_device"]["plugin"] == "builtin"
    assert entries["environment", "local"]["plugin"] == "builtin"
    assert report["autoload"] is True
    assert report["failures"] == []


def test_plugins_table_lists_cpu_and_the_builtin_precisions(runs):
    lines = runs["clean", "plugins"].stdout.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "DISTRIBUTION", "STATUS"]
    cpu = next(line for line in lines if line.split()[:2] == ["accelerator", "cpu"])
    assert cpu.split()[2:] == ["cpu", "switchyard-cpu", "0.1.0", "usable"]
    assert any(line.split()[:3] == ["precision", "bf16-mixed", "(bf16)"] for line in lines)
    assert "failed to load" not in runs["clean", "plugins"].stdout


def test_env_json_is_a_bug_report(runs):
    report = json.loads(runs["clean", "env-json"].stdout)

    assert report["python"] == sys.version.split()[0]
    assert report["versions"]["torch"] == torch.__version__
    assert report["versions"]["switchyard"] == "0.1.0"
    assert report["accelerators"]["cpu"]["usable"] is True
    assert report["accelerators"]["cpu"]["device_type"] == "cpu"
    assert report["accelerators"]["cpu"]["device_count"] >= 1
    assert report["plugin_distributions"]["switchyard-cpu"] == "0.1.0"
    assert report["plugin_distributions"]["switchyard"] == "0.1.0"
    assert report["plugin_failures"] == []
    assert report["environment_variables"]["SWITCHYARD_TEST_MARKER_VAR"] == "visible"


def test_env_text_shows_the_same(runs):
    out = runs["clean", "env"].stdout
    assert "accelerators:" in out
    assert "cpu: {'usable': True" in out
    assert "switchyard-cpu: 0.1.0" in out
    assert "plugin_failures: none" in out


def test_broken_plugin_is_listed_as_a_failure_and_the_others_stay_usable(runs):
    report = json.loads(runs["site", "plugins-json"].stdout)

    (failure,) = [f for f in report["failures"] if f["plugin"] == "broken"]
    assert failure["distribution"] == "broken-vendor"
    assert failure["version"] == "0.5.0"
    assert failure["stage"] == "import"
    assert "needs libbroken.so" in failure["error"]
    entries = _entries(report)
    assert entries["accelerator", "cpu"]["usable"] is True
    assert entries["precision", "32-true"]["usable"] is True
    lazy = entries["strategy", "lazy-strategy"]
    assert (lazy["plugin"], lazy["distribution"], lazy["usable"]) == ("lazy", "lazy-vendor", True)
    assert entries["precision", "lazy-precision"]["usable"] is True

    text = runs["site", "plugins"].stdout
    assert "plugins that failed to load (skipped; the others work):" in text
    assert "broken (broken-vendor 0.5.0) at import: ImportError: needs libbroken.so" in text
    assert "lazy-strategy" in text
    cpu = next(line for line in text.splitlines() if line.split()[:2] == ["accelerator", "cpu"])
    assert cpu.split()[-1] == "usable"


def test_listing_never_imports_strategy_or_precision_implementations(runs):
    # every command has finished; the lazy plugin was loaded (its entries are listed above)
    # but the module its entries point to never was
    assert all(result.returncode == 0 for key, result in runs.items() if key != "marker")
    assert not runs["marker"].exists()
