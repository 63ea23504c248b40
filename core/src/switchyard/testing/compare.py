"""Comparing tensors and state the way the checks need, with messages that say where and by how
much two things differ."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bit patterns as integers, so that NaN payloads and -0.0 compare too."""
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bool:
        return tensor.view(torch.uint8)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        return tensor.view(_BITS[tensor.element_size()])
    return tensor


def _hex(value: int, size: int) -> str:
    return f"0x{value & ((1 << (8 * size)) - 1):0{2 * size}x}"


def bit_difference(
    sent: torch.Tensor, got: torch.Tensor, labels: tuple[str, str] = ("sent", "got")
) -> str | None:
    """``None`` if ``got`` has the dtype, shape and exact bits of ``sent``; otherwise what
    differs, with the first differing element (named with ``labels``)."""
    if got.dtype != sent.dtype:
        return f"came back as {got.dtype}, not {sent.dtype}"
    if got.shape != sent.shape:
        return f"came back with shape {tuple(got.shape)}, not {tuple(sent.shape)}"
    a, b = as_bits(sent).flatten(), as_bits(got).flatten()
    differ = (a != b).nonzero().flatten()
    if differ.numel() == 0:
        return None
    first = int(differ[0])
    size = sent.element_size()
    message = (
        f"{differ.numel()} of {a.numel()} elements differ; the first at flat index {first}: "
        f"{labels[0]} {sent.flatten()[first].item()!r} ({_hex(int(a[first]), size)}), "
        f"{labels[1]} {got.flatten()[first].item()!r} ({_hex(int(b[first]), size)})"
    )
    if sent.dtype.is_floating_point:
        nan_only = bool(torch.isnan(sent.flatten()[differ]).all())
        if nan_only:
            message += " (only NaN payloads differ: the copy path canonicalises NaN)"
    return message


def close_difference(
    name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float
) -> str | None:
    """``None`` if ``got`` is within ``atol + rtol * |want|`` of ``want`` everywhere."""
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    error = (g - w).abs()
    allowed = atol + rtol * w.abs()
    bad = (error > allowed) | (torch.isnan(g) != torch.isnan(w))
    if not bool(bad.any()):
        return None
    index = int(bad.flatten().nonzero()[0])
    return (
        f"{name}: {int(bad.sum())} of {g.numel()} elements differ beyond rtol={rtol:g}, "
        f"atol={atol:g}; largest difference {float(error.nan_to_num(math.inf).max()):.3g}; "
        f"first at flat index {index}: got {float(g.flatten()[index]):.8g}, expected "
        f"{float(w.flatten()[index]):.8g}"
    )


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on the CPU, also for a sharded ``DTensor`` (FSDP2)."""
    gather = getattr(tensor, "full_tensor", None)
    if callable(gather):
        tensor = gather()
    return tensor.detach().cpu().clone()


def flatten_state(state: Any, prefix: str = "") -> dict[str, Any]:
    """A nested state (state dicts, optimizer state) as ``{"a.b.0": leaf}``, tensors copied to
    the CPU, so two states compare key by key and travel in a ``weights_only`` file."""
    out: dict[str, Any] = {}
    if isinstance(state, Mapping):
        for key, value in state.items():
            out.update(flatten_state(value, f"{prefix}{key}."))
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            out.update(flatten_state(value, f"{prefix}{index}."))
        if not state:
            out[prefix.rstrip(".")] = type(state)()
    elif isinstance(state, torch.Tensor):
        out[prefix.rstrip(".")] = full_tensor(state)
    else:
        out[prefix.rstrip(".")] = state
    return out


def state_difference(got: Mapping[str, Any], want: Mapping[str, Any]) -> str | None:
    """``None`` if a restored flattened state is identical to the saved one (tensors bit for
    bit); otherwise the first difference."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        return f"keys differ: missing {missing[:5]}, unexpected {extra[:5]}"
    for key in want:
        a, b = got[key], want[key]
        if isinstance(b, torch.Tensor):
            if not isinstance(a, torch.Tensor):
                return f"{key}: a {type(a).__name__}, expected a tensor"
            problem = bit_difference(b, a, ("saved", "restored"))
            if problem is not None:
                return f"{key}: {problem}"
        elif a != b and not (_is_nan(a) and _is_nan(b)):
            return f"{key}: {a!r}, expected {b!r}"
    return None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
