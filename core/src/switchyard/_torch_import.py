"""``import torch``, with a clear error when a broken installed distribution makes it fail.

``import torch`` reads the entry points of every installed distribution, to autoload the
device extensions of the ``torch.backends`` group (unless ``TORCH_DEVICE_BACKEND_AUTOLOAD=0``),
and ``importlib.metadata`` raises for all of them when one distribution's ``entry_points.txt``
is not valid (not UTF-8, a line without ``=``). Every ``import torch`` in that environment then
fails with a traceback deep in ``importlib.metadata`` that names no distribution. switchyard
imports torch first of all, here, and when that happens names the distribution, its file and
how to get out. Standard library only, until torch imports.
"""

from __future__ import annotations

import importlib.metadata


def unreadable_entry_points() -> list[str]:
    """``"NAME (PATH): ERROR"`` for each installed distribution whose entry points cannot be
    read."""
    found = []
    for dist in importlib.metadata.distributions():
        try:
            dist.entry_points  # noqa: B018  # parsing is what fails
        except Exception as error:
            where = getattr(dist, "_path", None)
            try:
                name = dist.metadata["Name"] or "a distribution"
            except Exception:
                name = "a distribution"
            found.append(f"{name} ({where}) is not valid: {type(error).__name__}: {error}")
    return found


try:
    import torch  # noqa: F401
except Exception as error:
    broken = unreadable_entry_points()
    if not broken:
        raise
    raise ImportError(
        "import torch failed while reading the entry points of the installed distributions "
        "(torch autoloads its device extensions from them): the entry_points.txt of "
        + "; of ".join(broken)
        + ". Every 'import torch' in this environment fails until it is fixed: reinstall or "
        "uninstall that distribution. Meanwhile TORCH_DEVICE_BACKEND_AUTOLOAD=0 lets torch "
        "import without autoloading device extensions (TORCH_DEVICE_BACKEND_AUTOLOAD=0 "
        "switchyard plugins lists what else is broken)."
    ) from error
