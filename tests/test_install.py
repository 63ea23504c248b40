"""Installing switchyard the ways the documentation tells users to, from this checkout.

The slow tests run each documented pip command in a fresh virtual environment and then use what
it installed (``switchyard plugins``, a one-process DDP run), and check that no install left build
output (``build/``, ``*.egg-info``, ``dist/``) in the checkout. Installing torch takes most of the
time of a fresh environment, so one environment gets the torch of ``requirements/dev.txt`` once
per session and each test starts from a copy of it made of hard links: still a ``python -m venv``
environment that holds nothing but torch, with torch in its own site-packages. The session also
compiles, once, the bytecode of what the tests' processes import from torch (see
:data:`TORCH_IMPORTS`), as a default ``pip install torch`` would have. pip builds and installs
on one core, so the first pip command of each such test (``@installs_first(...)``) runs ahead,
:data:`INSTALLS_AHEAD` at a time, while the tests before it run; each test then checks its own.

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
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


def _clean_env(venv: Path | None = None, *, write_bytecode: bool = False) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _LEAKY and not k.startswith("SWITCHYARD_")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # editable imports must not write into the checkout
    if write_bytecode:
        del env["PYTHONDONTWRITEBYTECODE"]
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _start(
    args: list[str | Path],
    venv: Path | None,
    timeout: float = 300,
    cwd: Path = ROOT,
    *,
    write_bytecode: bool = False,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``args`` to the end: the finished process and the seconds it took."""
    start = time.perf_counter()
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_clean_env(venv, write_bytecode=write_bytecode),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc, time.perf_counter() - start


def _run(
    args: list[str | Path],
    venv: Path | None,
    timeout: float = 300,
    cwd: Path = ROOT,
    *,
    write_bytecode: bool = False,
) -> str:
    proc, took = _start(args, venv, timeout, cwd, write_bytecode=write_bytecode)
    return _outcome(args, proc, took)


def _outcome(args: list[str | Path], proc: subprocess.CompletedProcess[str], took: float) -> str:
    """The output of a finished command, or the test fails with what it printed."""
    # shown with -rA or on failure: where the time goes
    print(f"$ {' '.join(str(a) for a in args)}  [{took:.1f}s, exit {proc.returncode}]")
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(str(a) for a in args)} exited with {proc.returncode}:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc.stdout


TORCH_IMPORTS = """
import torch, torch.distributed, torch.nn.parallel
torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # loads torch._dynamo and sympy
"""
"""What the tests' processes import from torch (``switchyard plugins``, the kit, the DDP run),
run once in the session's environment to write its bytecode there (outside the checkout)."""


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
    # --no-compile skips compiling all of torch; the processes of the tests run with
    # PYTHONDONTWRITEBYTECODE, so each of them would compile what it imports from source again
    _run([venv / "bin" / "python", "-c", TORCH_IMPORTS], None, cwd=venv, write_bytecode=True)
    return venv


def _fresh_venv(torch_venv: Path, folder: Path) -> Path:
    """A copy of ``torch_venv`` in ``folder`` (hard links where the file system allows)."""
    venv = folder / "venv"

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(torch_venv, venv, symlinks=True, copy_function=link)
    return venv


INSTALLS_AHEAD = 2
"""First installs running at once: this machine's two cores."""

Test = Callable[..., None]


def installs_first(*pip_args: str) -> Callable[[Test], Test]:
    """Marks a test whose first command is ``python -m pip PIP_ARGS`` in a fresh environment:
    :func:`first_installs` runs it ahead, and the test's ``installed_venv`` is that environment
    once it has finished."""

    def mark(test: Test) -> Test:
        test.pip_args = pip_args  # type: ignore[attr-defined]
        return test

    return mark


FirstInstall = tuple[list[str | Path], "Future[tuple[subprocess.CompletedProcess[str], float]]"]


@pytest.fixture(scope="module")
def first_installs(
    request: pytest.FixtureRequest,
    torch_venv: Path,
    checkout_before_installs: set[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Path, FirstInstall]]]:
    """The first pip command of each selected test of this module marked ``installs_first``,
    each in its own copy of ``torch_venv``, started in the order the tests run,
    :data:`INSTALLS_AHEAD` at a time: by test id, the environment and the command running."""
    pool = ThreadPoolExecutor(INSTALLS_AHEAD, thread_name_prefix="first-install")
    started: dict[str, tuple[Path, FirstInstall]] = {}
    for item in request.session.items:
        pip_args = getattr(getattr(item, "function", None), "pip_args", None)
        if pip_args is None or item.module is not request.module:
            continue
        venv = _fresh_venv(torch_venv, tmp_path_factory.mktemp("first-install"))
        args: list[str | Path] = [venv / "bin" / "python", "-m", "pip", *pip_args]
        started[item.nodeid] = (venv, (args, pool.submit(_start, args, venv)))
    yield started
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def installed_venv(
    request: pytest.FixtureRequest, first_installs: dict[str, tuple[Path, FirstInstall]]
) -> Path:
    """The test's fresh environment (a copy of ``torch_venv``) after its ``installs_first``
    command; the test fails, as any command of it would, if the command failed."""
    venv, (args, running) = first_installs[request.node.nodeid]
    _outcome(args, *running.result())
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


@pytest.fixture(scope="module")
def checkout_before_installs() -> set[str]:
    """The build output in the checkout before any install of this module (some run ahead)."""
    return _build_output_in_checkout()


@pytest.fixture
def checkout_stays_clean(checkout_before_installs: set[str]) -> Iterator[None]:
    yield
    added = _build_output_in_checkout() - checkout_before_installs
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
@installs_first("install", "./core")
def test_pip_install_core_gives_the_default_plugins_and_runs_ddp(installed_venv, tmp_path):
    entries = _installed_entries(installed_venv)
    assert _distributions(entries) == {"switchyard", "switchyard-cpu", "switchyard-ddp"}
    assert entries["accelerator", "cpu"]["usable"]
    assert entries["strategy", "ddp"]["usable"]

    python = installed_venv / "bin" / "python"
    metadata = json.loads(
        _run(
            [
                python,
                "-c",
                "import importlib.metadata as m, json; d = m.metadata('switchyard'); "
                "print(json.dumps([d.get_all('Provides-Extra'), d.get_all('Requires-Dist')]))",
            ],
            installed_venv,
        )
    )
    assert set(metadata[0]) == EXPECTED_EXTRAS
    assert f"switchyard-cpu @ {(PLUGINS / 'cpu').as_uri()}" in metadata[1]

    script = tmp_path / "ddp_one_process.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    output = _run([python, script], installed_venv, timeout=240)
    assert "RESULT 1 DDPStrategy True" in output, output


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("checkout_stays_clean")
@installs_first("install", "./core[fsdp]")
def test_pip_install_core_with_extras(installed_venv, tmp_path):
    entries = _installed_entries(installed_venv)
    assert "switchyard-fsdp" in _distributions(entries)
    assert entries["strategy", "fsdp"]["usable"]
    # the other extras resolve too; testing brings what the conformance kit needs
    _pip(installed_venv, "install", "./core[all,testing]")
    kit_help = _run(
        [installed_venv / "bin" / "python", "-m", "pytest", "-p", "switchyard.testing", "--help"],
        installed_venv,
        cwd=tmp_path,
    )
    assert "--switchyard-accelerator" in kit_help


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("checkout_stays_clean")
@installs_first(
    "install", "-e", "./core", *(a for name in PLUGIN_FOLDERS for a in ("-e", f"./plugins/{name}"))
)
def test_editable_install_of_core_beside_editable_plugins(installed_venv):
    entries = _installed_entries(installed_venv)
    assert _distributions(entries) == {
        "switchyard",
        *(f"switchyard-{name}" for name in PLUGIN_FOLDERS),
    }
    where = _run(
        [
            installed_venv / "bin" / "python",
            "-c",
            "import switchyard, switchyard_cpu; print(switchyard.__file__, switchyard_cpu.__file__)",
        ],
        installed_venv,
    ).split()
    assert Path(where[-2]).is_relative_to(CORE / "src")
    assert Path(where[-1]).is_relative_to(PLUGINS / "cpu" / "src")
