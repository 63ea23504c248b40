"""Installing switchyard the ways the documentation tells users to, from this checkout.

The slow tests run each documented pip command in a fresh virtual environment and then use what
it installed (``switchyard plugins``, a one-process DDP run), and check that no install left build
output (``build/``, ``*.egg-info``, ``dist/``) in the checkout. Installing torch takes most of the
time of a fresh environment, so one environment gets the torch of ``requirements/dev.txt`` once
per session and each test starts from a copy of it made of hard links: still a ``python -m venv``
environment that holds nothing but torch, with torch in its own site-packages.

The fast tests check core's dependency hook (``core/hatch_build.py``) and build backend
(``core/build_backend.py``) directly.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
PLUGINS = ROOT / "plugins"
DEFAULT_PLUGINS = {"cpu", "ddp"}
# what the documentation installs; an extra exists for every other plugin folder
PLUGIN_FOLDERS = sorted(p.name for p in PLUGINS.iterdir() if (p / "pyproject.toml").is_file())
EXPECTED_EXTRAS = {*(set(PLUGIN_FOLDERS) - DEFAULT_PLUGINS), "all", "testing"}


def _in_all(folder: str) -> bool:
    """Whether the plugin's extra belongs in ``[all]`` (``[tool.switchyard] in-all``): not for
    engines that pin a torch of their own."""
    with open(PLUGINS / folder / "pyproject.toml", "rb") as file:
        return bool(tomllib.load(file).get("tool", {}).get("switchyard", {}).get("in-all", True))


IN_ALL = {name for name in EXPECTED_EXTRAS - {"all", "testing"} if _in_all(name)}

# environment variables that would make a fresh environment less than fresh
_LEAKY = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_NO_BUILD_ISOLATION")
_LEAKY += ("PIP_USER", "PIP_TARGET", "PIP_PREFIX")
_BUILD_OUTPUT = re.compile(r"(^|/)(build|dist|[^/]+\.egg-info)(/|$)")


# -- core's build hooks ---------------------------------------------------------------------------


def _load(path: Path) -> ModuleType:
    pytest.importorskip("hatchling", reason="hatchling (requirements/dev.txt) is not installed")
    spec = importlib.util.spec_from_file_location(f"_switchyard_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _core_config() -> dict[str, Any]:
    # tomli: hatchling's dependency on Python 3.10
    tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    with (CORE / "pyproject.toml").open("rb") as file:
        pyproject = tomllib.load(file)
    return pyproject["tool"]["hatch"]["metadata"]["hooks"]["custom"]


def _computed(root: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    hook_module = _load(CORE / "hatch_build.py")
    monkeypatch.delenv("SWITCHYARD_PLUGIN_SOURCE", raising=False)
    monkeypatch.delenv(hook_module.EDITABLE_FLAG, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    metadata: dict[str, Any] = {}
    hook_module.PluginDependencies(str(root), _core_config()).update(metadata)
    return metadata


def test_checkout_build_points_at_the_plugin_folders(monkeypatch):
    metadata = _computed(CORE, monkeypatch)
    assert metadata["dependencies"] == [
        "torch>=2.8",
        "pluggy>=1.5",
        f"switchyard-cpu @ {(PLUGINS / 'cpu').as_uri()}",
        f"switchyard-ddp @ {(PLUGINS / 'ddp').as_uri()}",
    ]
    extras = metadata["optional-dependencies"]
    assert set(extras) == EXPECTED_EXTRAS
    assert extras["fsdp"] == [f"switchyard-fsdp @ {(PLUGINS / 'fsdp').as_uri()}"]
    assert extras["testing"] == ["pytest>=8"]
    assert extras["all"] == sorted(r for name in IN_ALL for r in extras[name])
    # the engines that pin their own torch or build against it stay out of [all]
    assert {"xla", "xpu", "deepspeed"} & set(PLUGIN_FOLDERS) <= EXPECTED_EXTRAS - IN_ALL


@pytest.mark.parametrize(
    "env",
    [{"_SWITCHYARD_EDITABLE_BUILD": "1"}, {"SWITCHYARD_PLUGIN_SOURCE": "index"}],
    ids=["editable", "release"],
)
def test_editable_and_release_builds_name_plugins_by_distribution(monkeypatch, env):
    metadata = _computed(CORE, monkeypatch, **env)
    assert metadata["dependencies"][2:] == ["switchyard-cpu", "switchyard-ddp"]
    assert metadata["optional-dependencies"]["fsdp"] == ["switchyard-fsdp"]
    assert set(metadata["optional-dependencies"]) == EXPECTED_EXTRAS


def test_extras_follow_the_plugin_folders_and_their_options(tmp_path, monkeypatch):
    def plugin(name: str, options: str = "") -> None:
        (tmp_path / "plugins" / name).mkdir(parents=True)
        (tmp_path / "plugins" / name / "pyproject.toml").write_text(
            f'[project]\nname = "switchyard-{name}"\nversion = "0.1.0"\n{options}'
        )

    (tmp_path / "core").mkdir()
    plugin("cpu")
    plugin("ddp")
    plugin("engine_pins_torch", '[tool.switchyard]\nextra-requires = ["pinned"]\nin-all = false\n')
    plugin("withengine", '[tool.switchyard]\nextra-requires = ["engine>=1"]\n')
    (tmp_path / "plugins" / "notaplugin").mkdir()  # no pyproject.toml: no extra
    extras = _computed(tmp_path / "core", monkeypatch, SWITCHYARD_PLUGIN_SOURCE="index")[
        "optional-dependencies"
    ]
    assert extras == {
        "engine_pins_torch": ["switchyard-engine_pins_torch", "pinned"],
        "withengine": ["switchyard-withengine", "engine>=1"],
        "all": ["engine>=1", "switchyard-withengine"],
        "testing": ["pytest>=8"],
    }


def test_build_backend_marks_only_editable_hooks():
    hook_module = _load(CORE / "hatch_build.py")
    backend = _load(CORE / "build_backend.py")
    flag = hook_module.EDITABLE_FLAG
    assert flag == backend.EDITABLE_FLAG
    assert os.environ.get(flag) is None
    seen = backend._wrap(lambda: os.environ.get(flag))()
    assert seen == "1"
    assert os.environ.get(flag) is None
    for hook in ("build_wheel", "build_sdist", "get_requires_for_build_wheel"):
        assert getattr(backend, hook) is getattr(backend._hatchling, hook)
    assert backend.build_editable.__name__ == "build_editable"
    assert backend.build_editable is not backend._hatchling.build_editable


# -- fresh environments ---------------------------------------------------------------------------


def _torch_pin() -> str:
    for line in (ROOT / "requirements" / "dev.txt").read_text().splitlines():
        if line.strip().startswith("torch=="):
            return line.split("==", 1)[1].split("#")[0].strip()
    raise AssertionError("requirements/dev.txt pins no torch")


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _LEAKY and not k.startswith("SWITCHYARD_")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # editable imports must not write into the checkout
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args: list[str | Path], venv: Path | None, timeout: float = 300, cwd: Path = ROOT) -> str:
    start = time.perf_counter()
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_clean_env(venv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    took = time.perf_counter() - start
    # shown with -rA or on failure: where the time goes
    print(f"$ {' '.join(str(a) for a in args)}  [{took:.1f}s, exit {proc.returncode}]")
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(str(a) for a in args)} exited with {proc.returncode}:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc.stdout


@pytest.fixture(scope="session")
def torch_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding only the torch of requirements/dev.txt."""
    pin = _torch_pin()
    running = importlib.metadata.version("torch").split("+")[0]
    if running != pin:
        # the pinned wheel is what scripts/env.sh installed; any other torch could mean a
        # download of several GB
        pytest.skip(
            f"the install tests build their environments with torch=={pin} "
            f"(requirements/dev.txt), but this interpreter runs torch {running}"
        )
    if importlib.util.find_spec("ensurepip") is None:
        pytest.skip(f"{sys.executable} cannot create virtual environments (no ensurepip)")
    venv = tmp_path_factory.mktemp("torch-venv") / "venv"
    _run([sys.executable, "-m", "venv", venv], None)
    _run(
        [venv / "bin" / "python", "-m", "pip", "install", "--no-compile", f"torch=={pin}"],
        None,
        timeout=600,
    )
    return venv


@pytest.fixture
def fresh_venv(torch_venv: Path, tmp_path: Path) -> Path:
    """A copy of ``torch_venv`` (hard links where the file system allows)."""
    venv = tmp_path / "venv"

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(torch_venv, venv, symlinks=True, copy_function=link)
    return venv


def _build_output_in_checkout() -> set[str]:
    """Build-output folders under core/, plugins/ and examples/ on disk, plus, in a git
    checkout, every ignored or build-output entry ``git status --ignored`` reports there
    (bytecode caches aside; other entries are left out so that source files being edited
    meanwhile do not count)."""
    found: set[str] = set()
    if shutil.which("git") is not None and (ROOT / ".git").exists():
        status = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--", "core", "plugins", "examples"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found.update(
            line
            for line in status.splitlines()
            if "__pycache__" not in line
            and (line.startswith("!!") or _BUILD_OUTPUT.search(line[3:]))
        )
    for top in ("core", "plugins", "examples"):
        for path in (ROOT / top).rglob("*"):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_dir() and _BUILD_OUTPUT.search(relative) and ".venv" not in relative:
                found.add(f"on disk: {relative}")
    return found


@pytest.fixture
def checkout_stays_clean() -> Iterator[None]:
    before = _build_output_in_checkout()
    yield
    added = _build_output_in_checkout() - before
    assert not added, f"installing wrote into the checkout: {sorted(added)}"


def _pip(venv: Path, *args: str) -> str:
    return _run([venv / "bin" / "python", "-m", "pip", *args], venv)


def _installed_entries(venv: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """``switchyard plugins --json`` in the environment, by (kind, name)."""
    pip_check = _pip(venv, "check")
    assert "No broken requirements" in pip_check
    report = json.loads(_run([venv / "bin" / "switchyard", "plugins", "--json"], venv))
    return {(e["kind"], e["name"]): e for e in report["entries"]}


def _distributions(entries: dict[tuple[str, str], dict[str, Any]]) -> set[str]:
    return {e["distribution"] for e in entries.values()}


DDP_SCRIPT = """
    import torch
    from switchyard import Runtime

    runtime = Runtime(strategy="ddp", devices=1)
    runtime.launch()
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = runtime.setup(model, optimizer)
    loss = model(torch.randn(8, 4)).sum()
    runtime.backward(loss)
    optimizer.step()
    total = runtime.all_reduce(loss.detach(), op="sum")
    print("RESULT", runtime.world_size, type(runtime.strategy).__name__, bool(torch.isfinite(total)))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("checkout_stays_clean")
def test_pip_install_core_gives_the_default_plugins_and_runs_ddp(fresh_venv, tmp_path):
    _pip(fresh_venv, "install", "./core")
    entries = _installed_entries(fresh_venv)
    assert _distributions(entries) == {"switchyard", "switchyard-cpu", "switchyard-ddp"}
    assert entries["accelerator", "cpu"]["usable"]
    assert entries["strategy", "ddp"]["usable"]

    python = fresh_venv / "bin" / "python"
    metadata = json.loads(
        _run(
            [
                python,
                "-c",
                "import importlib.metadata as m, json; d = m.metadata('switchyard'); "
                "print(json.dumps([d.get_all('Provides-Extra'), d.get_all('Requires-Dist')]))",
            ],
            fresh_venv,
        )
    )
    assert set(metadata[0]) == EXPECTED_EXTRAS
    assert f"switchyard-cpu @ {(PLUGINS / 'cpu').as_uri()}" in metadata[1]

    script = tmp_path / "ddp_one_process.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    output = _run([python, script], fresh_venv, timeout=240)
    assert "RESULT 1 DDPStrategy True" in output, output


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("checkout_stays_clean")
def test_pip_install_core_with_extras(fresh_venv, tmp_path):
    _pip(fresh_venv, "install", "./core[fsdp]")
    entries = _installed_entries(fresh_venv)
    assert "switchyard-fsdp" in _distributions(entries)
    assert entries["strategy", "fsdp"]["usable"]
    # the other extras resolve too; testing brings what the conformance kit needs
    _pip(fresh_venv, "install", "./core[all,testing]")
    kit_help = _run(
        [fresh_venv / "bin" / "python", "-m", "pytest", "-p", "switchyard.testing", "--help"],
        fresh_venv,
        cwd=tmp_path,
    )
    assert "--switchyard-accelerator" in kit_help


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("checkout_stays_clean")
def test_editable_install_of_core_beside_editable_plugins(fresh_venv):
    folders = [f"./plugins/{name}" for name in PLUGIN_FOLDERS]
    _pip(fresh_venv, "install", "-e", "./core", *(a for f in folders for a in ("-e", f)))
    entries = _installed_entries(fresh_venv)
    assert _distributions(entries) == {
        "switchyard",
        *(f"switchyard-{name}" for name in PLUGIN_FOLDERS),
    }
    where = _run(
        [
            fresh_venv / "bin" / "python",
            "-c",
            "import switchyard, switchyard_cpu; print(switchyard.__file__, switchyard_cpu.__file__)",
        ],
        fresh_venv,
    ).split()
    assert Path(where[-2]).is_relative_to(CORE / "src")
    assert Path(where[-1]).is_relative_to(PLUGINS / "cpu" / "src")
