"""The Python environment each benchmarked program runs in.

``raw`` and ``switchyard`` run in the interpreter running the benchmarks (the project's
``.venv``). Lightning Fabric and Accelerate each get their own virtual environment, made by
``scripts/engine-env`` from ``requirements/engine-fabric.txt`` and
``requirements/engine-accelerate.txt`` on the same torch build, so that neither library's
dependencies leak into the others' measurements."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENGINE_ENVIRONMENTS = {"fabric": "fabric", "accelerate": "accelerate"}
"""Program name -> ``requirements/engine-NAME.txt`` of its environment."""


def python_for(program: str, log: Callable[[str], None] = print) -> Path:
    """The interpreter for ``program``, building its environment on first use."""
    if program in ("raw", "switchyard"):
        return Path(sys.executable)
    if program not in ENGINE_ENVIRONMENTS:
        known = ["raw", "switchyard", *ENGINE_ENVIRONMENTS]
        raise ValueError(f"no environment for program {program!r}; known programs: {known}")
    return engine_python(ENGINE_ENVIRONMENTS[program], log)


@cache
def engine_python(name: str, log: Callable[[str], None] = print) -> Path:
    """The interpreter of ``requirements/engine-NAME.txt``'s environment, made (or reused) by
    ``scripts/engine-env NAME``; once per process and name."""
    log(f"making (or reusing) the {name} environment with scripts/engine-env {name}...")
    done = subprocess.run(
        [str(ROOT / "scripts" / "engine-env"), name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/engine-env {name} failed (exit {done.returncode}):\n{done.stderr.strip()}"
        )
    venv = Path(done.stdout.strip().splitlines()[-1])
    python = venv / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"scripts/engine-env {name} printed {venv}, which has no bin/python")
    return python


def run_json_child(
    python: Path, args: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> Any:
    """Run ``python args...`` from the repository root (so ``benchmarks`` imports in any of the
    environments) and parse the JSON it prints as the last line of its stdout."""
    command = [str(python), *args]
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{shlex.join(command)} ran past {timeout:.0f} s") from error
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{shlex.join(command)} failed (exit {done.returncode}):\n{done.stderr.strip()[-3000:]}"
        )
    return json.loads(lines[-1])
