"""The Lightning Fabric side of the migration tests, run by the Fabric environment's python.

    ~/.cache/switchyard/envs/fabric-KEY/bin/python fabric_side.py JOBS.json

``JOBS.json`` is ``{"api": "api.json", "runs": [{"script": ..., "cwd": ..., "args": [...]}]}``.
Every script runs as ``python SCRIPT ARGS...`` would run it (as ``__main__``, its folder first on
``sys.path``, ``sys.argv`` set), in its ``cwd``, its stdout kept in ``cwd/stdout.txt`` and its
traceback, if it fails, in ``cwd/error.txt``; then Fabric's public API, as :func:`describe`
gives it, is written to ``api``. All in one interpreter: importing Lightning takes seconds, and
the test suite pays for it once. Exits 1 if a script failed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any


def describe(cls: type) -> dict[str, Any]:
    """``{member: "property" | [parameter names]}`` for the public members of ``cls`` and its
    ``__init__``; parameters whose names start with ``_`` (private) are left out."""
    members: dict[str, Any] = {}
    for name, value in inspect.getmembers(cls):
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(inspect.getattr_static(cls, name), property):
            members[name] = "property"
            continue
        if not callable(value):
            continue
        parameters = inspect.signature(value).parameters
        members[name] = [p for p in parameters if p != "self" and not p.startswith("_")]
    return members


def run_script(script: str, cwd: str, args: list[str]) -> bool:
    here = os.getcwd()
    saved_argv, saved_path = sys.argv, list(sys.path)
    os.chdir(cwd)
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).parent))
    try:
        with open("stdout.txt", "w") as out, contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
    except BaseException:
        Path("error.txt").write_text(traceback.format_exc())
        return False
    finally:
        os.chdir(here)
        sys.argv, sys.path[:] = saved_argv, saved_path
    return True


def main() -> int:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    # every script runs, even after one failed
    results = [run_script(run["script"], run["cwd"], run["args"]) for run in jobs["runs"]]
    from lightning.fabric import Fabric

    Path(jobs["api"]).write_text(json.dumps(describe(Fabric)))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
