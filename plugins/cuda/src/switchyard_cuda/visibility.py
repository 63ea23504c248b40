"""What ``CUDA_VISIBLE_DEVICES`` makes visible, said in words for error messages.

Device indices in switchyard, as in torch, are the visible ones: with
``CUDA_VISIBLE_DEVICES=2,3`` the process sees two GPUs, as indices 0 and 1.
"""

from __future__ import annotations

import os

VARIABLE = "CUDA_VISIBLE_DEVICES"


def visibility_note(count: int) -> str:
    """``"CUDA_VISIBLE_DEVICES='2,3' makes 2 GPU(s) visible, as indices 0..1"``, or what the
    unset variable means, for ``count`` visible devices."""
    value = os.environ.get(VARIABLE)
    seen = f"as indices 0..{count - 1}" if count > 1 else ("as index 0" if count == 1 else "")
    if value is None:
        if count == 0:
            return f"{VARIABLE} is not set, and no GPU is visible"
        return f"{VARIABLE} is not set: all {count} GPU(s) of this machine are visible, {seen}"
    if count == 0:
        return (
            f"{VARIABLE}={value!r} leaves no GPU visible; unset it or list the GPUs to use "
            f"(e.g. {VARIABLE}=0,1)"
        )
    return (
        f"{VARIABLE}={value!r} makes {count} GPU(s) visible, {seen} (indices count the "
        "visible GPUs, not the machine's)"
    )
