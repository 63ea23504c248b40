"""Core's build backend: hatchling, telling ``hatch_build.py`` whether the build is editable.

An editable core (``pip install -e ./core -e ./plugins/cpu -e ./plugins/ddp``) must name its
plugins by distribution (``switchyard-cpu``) so that the editable plugin folders satisfy them; a
regular build from a checkout points at the folders instead. PEP 517/660 hooks carry no such
information to hatchling's metadata hooks, so the editable hooks set ``EDITABLE_FLAG`` while
they run. Every other hook is hatchling's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hatchling import build as _hatchling
from hatchling.build import *  # noqa: F403

EDITABLE_FLAG = "_SWITCHYARD_EDITABLE_BUILD"  # the name hatch_build.py reads

__all__ = list(_hatchling.__all__)


@contextmanager
def _editable() -> Iterator[None]:
    before = os.environ.get(EDITABLE_FLAG)
    os.environ[EDITABLE_FLAG] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[EDITABLE_FLAG]
        else:
            os.environ[EDITABLE_FLAG] = before


def _wrap(hook: Callable[..., Any]) -> Callable[..., Any]:
    def editable_hook(*args: Any, **kwargs: Any) -> Any:
        with _editable():
            return hook(*args, **kwargs)

    editable_hook.__name__ = hook.__name__
    editable_hook.__doc__ = hook.__doc__
    return editable_hook


build_editable = _wrap(_hatchling.build_editable)
get_requires_for_build_editable = _wrap(_hatchling.get_requires_for_build_editable)
# hatchling defines this one only outside pip (see hatchling.build)
if hasattr(_hatchling, "prepare_metadata_for_build_editable"):
    prepare_metadata_for_build_editable = _wrap(_hatchling.prepare_metadata_for_build_editable)
