"""Starting child processes for the kit, switchyard's tests and its benchmarks: a clean
environment (:func:`child_environment`), a timeout that ends the whole process tree (torchrun's
workers included), and output kept for messages (:func:`run`)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from switchyard.testing.cluster_variables import is_cluster_variable

# variables that would make a child believe it already belongs to a distributed job (every
# scheduler the built-in environments detect), or that carry a previous choice of accelerator
# or strategy (SWITCHYARD_*)
PLUGIN_SWITCHES = frozenset(
    {"SWITCHYARD_PLUGINS", "SWITCHYARD_BLOCK_PLUGINS", "SWITCHYARD_DISABLE_PLUGIN_AUTOLOAD"}
)
"""The ``SWITCHYARD_*`` variables that decide which plugins are discovered."""


@functools.cache
def _default_path(pythonpath: str) -> tuple[str, ...]:
    """``sys.path`` of a fresh interpreter started with ``PYTHONPATH=pythonpath``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return tuple(json.loads(out.stdout))


def child_environment(
    extra: Mapping[str, str] | None = None,
    *,
    import_path: bool = True,
    pythonpath: Sequence[str | os.PathLike[str]] = (),
    plugin_switches: bool = True,
    bytecode_cache: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """This process's environment for a child: without the variables of a distributed job
    (``MASTER_ADDR``, ``RANK``..., ``TORCHELASTIC_*``, ``SLURM_*``, ``OMPI_*``, ``PMI_*``,
    ``PMIX_*``, ``LSB_*``) and ``SWITCHYARD_*`` choices, with unbuffered output
    (``PYTHONUNBUFFERED=1``), then ``extra``.

    Args:
        extra: variables set last (``{"OMP_NUM_THREADS": "1"}``).
        import_path: put on the child's ``PYTHONPATH`` the folders of this process's
            ``sys.path`` that a fresh interpreter lacks (plugins a test put there), so that the
            child imports whatever this process can. ``False``: the child imports what is
            installed and what ``PYTHONPATH`` already names, as a fresh shell's ``python`` does.
        pythonpath: folders to put first on the child's ``PYTHONPATH``.
        plugin_switches: keep :data:`PLUGIN_SWITCHES`, so that the child discovers the plugins
            this process does; ``False`` drops them too, so it discovers what is installed.
        bytecode_cache: a folder where the child writes and reads bytecode
            (``PYTHONPYCACHEPREFIX``), even where ``PYTHONDONTWRITEBYTECODE`` is set.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not is_cluster_variable(k)
        and (not k.startswith("SWITCHYARD_") or (plugin_switches and k in PLUGIN_SWITCHES))
    }
    inherited = env.get("PYTHONPATH", "")
    entries = [os.fspath(p) for p in pythonpath]
    if import_path:
        known = {*_default_path(inherited), *entries}
        entries += [p for p in dict.fromkeys(sys.path) if p and p not in known and os.path.isdir(p)]
    if entries:
        env["PYTHONPATH"] = os.pathsep.join([*entries, *([inherited] if inherited else [])])
    if bytecode_cache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.fspath(bytecode_cache)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Finished:
    """A child process that ended, or was ended after ``timeout`` seconds."""

    command: tuple[str, ...]
    returncode: int | None
    """``None`` when the child was killed at the timeout."""
    output: str
    duration: float
    timeout: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self, lines: int = 40) -> str:
        """The last lines of its combined stdout and stderr."""
        return "\n".join(self.output.rstrip().splitlines()[-lines:]) or "(no output)"

    def describe(self) -> str:
        """``"exited with code 1 after 3.2 s"`` or ``"did not finish within 240 s"``."""
        if self.timed_out:
            return f"did not finish within {self.timeout:.0f} s and was killed"
        return f"exited with code {self.returncode} after {self.duration:.1f} s"


def run(
    command: Sequence[str],
    *,
    timeout: float,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Finished:
    """Run ``command`` in its own process group with its output written to ``log``; at the
    timeout the whole group is killed, so no grandchild (a torchrun worker stuck in a
    collective) outlives the kit."""
    start = time.monotonic()
    with log.open("w", encoding="utf-8", errors="replace") as handle:
        proc = subprocess.Popen(
            list(command),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else child_environment(),
            cwd=cwd,
            start_new_session=os.name == "posix",
        )
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            _end_group(proc)
    output = log.read_text(encoding="utf-8", errors="replace")
    return Finished(tuple(command), returncode, output, time.monotonic() - start, timeout)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    if os.name == "posix":
        # the leader may have exited while its workers still run; the group outlives it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()
