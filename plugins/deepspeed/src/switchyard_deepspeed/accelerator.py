"""DeepSpeed's accelerator, chosen to be switchyard's, never left to DeepSpeed's own guess.

DeepSpeed picks its accelerator once per process (``deepspeed.accelerator.get_accelerator``)
from ``DS_ACCELERATOR`` or by probing installed packages, and every op build, communication
backend and device call follows that choice. A guess that differs from the device switchyard
runs on (CUDA probed while the run is on CPU, say) would put tensors on two devices. The name
is the accelerator's ``device_type`` (DeepSpeed names its accelerators after torch's device
types), or the ``deepspeed_accelerator`` class attribute an accelerator plugin sets where the two
differ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from switchyard.accelerator import Accelerator
from switchyard.errors import SelectionError

VARIABLE = "DS_ACCELERATOR"

KNOWN = ("cuda", "cpu", "xpu", "npu", "mps", "hpu", "mlu", "sdaa", "supa", "klxpu")
"""DeepSpeed 0.19's accelerator names (``SUPPORTED_ACCELERATOR_LIST``), checked at selection
without importing DeepSpeed."""


def deepspeed_name(accelerator: type[Accelerator] | Accelerator) -> str:
    """The DeepSpeed accelerator for a switchyard accelerator; a
    :class:`~switchyard.SelectionError` for one DeepSpeed does not support."""
    cls = accelerator if isinstance(accelerator, type) else type(accelerator)
    name = str(getattr(cls, "deepspeed_accelerator", None) or cls.device_type)
    if name not in KNOWN:
        raise SelectionError(
            f"the deepspeed strategies run on DeepSpeed's accelerators "
            f"({', '.join(KNOWN)}); {cls.__name__} computes on {cls.device_type!r} tensors, "
            "which DeepSpeed has no accelerator for. Use another strategy (ddp, fsdp) on this "
            "device, or set deepspeed_accelerator on the accelerator class if DeepSpeed knows "
            "the device under another name"
        )
    return name


def select(accelerator: Accelerator) -> Any:
    """Make DeepSpeed use the accelerator matching ``accelerator`` in this process, and return
    DeepSpeed's accelerator object. Sets ``DS_ACCELERATOR`` before DeepSpeed is imported; when
    DeepSpeed already chose another one in this process, that is an error (its ops and
    communication were set up for it)."""
    name = deepspeed_name(accelerator)
    chosen = os.environ.get(VARIABLE)
    if chosen and chosen != name:
        raise SelectionError(
            f"{VARIABLE}={chosen!r} is set, but switchyard runs on {type(accelerator).__name__} "
            f"({name!r} in DeepSpeed): unset {VARIABLE}, or choose the matching accelerator"
        )
    os.environ[VARIABLE] = name
    from deepspeed.accelerator import get_accelerator

    ds_accelerator = get_accelerator()
    if ds_accelerator._name != name:
        raise SelectionError(
            f"DeepSpeed already runs on its {ds_accelerator._name!r} accelerator in this "
            f"process, but switchyard runs on {type(accelerator).__name__} ({name!r}): create "
            "the Runtime before anything imports and uses DeepSpeed"
        )
    return ds_accelerator


def check_precision(ds_accelerator: Any, config: Mapping[str, Any]) -> None:
    """Refuse, before any engine is built, a half precision DeepSpeed's accelerator cannot run
    here (DeepSpeed's own check comes only inside ``deepspeed.initialize``, as "Type fp16 is not
    supported on your device")."""
    modes = {
        "fp16": ("16-mixed", ds_accelerator.is_fp16_supported),
        "bf16": ("bf16-mixed", ds_accelerator.is_bf16_supported),
    }
    for section, (precision, supported) in modes.items():
        settings = config.get(section)
        if isinstance(settings, Mapping) and settings.get("enabled") and not supported():
            others = [name for key, (name, check) in modes.items() if key != section and check()]
            hint = (
                "the CPU's float16 comes from oneDNN and needs AVX512-FP16 or AMX-FP16"
                if ds_accelerator._name == "cpu" and section == "fp16"
                else "the device has no such mode"
            )
            raise SelectionError(
                f"precision {precision!r} is DeepSpeed's {section!r} mode, which its "
                f"{ds_accelerator._name!r} accelerator does not support on this machine "
                f"({hint}); use {' or '.join(repr(name) for name in [*others, '32-true'])}"
            )
