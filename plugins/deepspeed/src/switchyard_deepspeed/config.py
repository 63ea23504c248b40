"""The DeepSpeed configuration a strategy runs with: the user's own (a dict or a JSON file), with
switchyard's arguments (ZeRO stage and offload, precision, gradient clipping, accumulation,
batch size) written into it. A value given both ways must agree; otherwise the error names both.

Pure dictionary work: nothing here imports DeepSpeed, so a conflict is reported when the
``Runtime`` is created, before any process starts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from switchyard.errors import SelectionError
from switchyard.precision import Precision

OffloadDevice = Literal["cpu", "nvme"]

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
"""The precisions this plugin maps onto DeepSpeed's own settings."""

_MISSING = object()


class ConfigConflictError(SelectionError):
    """A setting given both to the strategy (or the runtime) and in the DeepSpeed config, with
    different values."""


def read_config(config: Mapping[str, Any] | str | Path | None) -> tuple[dict[str, Any], str]:
    """The user's DeepSpeed config as a new dict, and where it came from (for messages): a dict
    is copied, a path is read as JSON."""
    if config is None:
        return {}, "the DeepSpeed config"
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), "the DeepSpeed config"
    if isinstance(config, (str, Path)):
        path = Path(config)
        try:
            text = path.read_text()
        except OSError as error:
            raise SelectionError(
                f"DeepSpeedStrategy(config={str(config)!r}): cannot read the DeepSpeed config "
                f"file ({error.strerror or error}); pass a JSON file that exists, or a dict"
            ) from error
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            raise SelectionError(
                f"DeepSpeedStrategy(config={str(config)!r}) is not valid JSON ({error}); "
                'DeepSpeed configs are JSON objects such as {"zero_optimization": {"stage": 2}}'
            ) from error
        if not isinstance(loaded, dict):
            raise SelectionError(
                f"DeepSpeedStrategy(config={str(config)!r}) holds a JSON "
                f"{type(loaded).__name__}, not an object of DeepSpeed settings"
            )
        return loaded, f"the DeepSpeed config {str(config)!r}"
    raise SelectionError(
        f"DeepSpeedStrategy(config={config!r}) must be a dict of DeepSpeed settings or the path "
        f"of a JSON file holding them, not a {type(config).__name__}"
    )


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def merge(config: dict[str, Any], dotted: str, value: Any, given_as: str, source: str) -> None:
    """Write ``value`` under the dotted key unless the config already holds it; a different
    value there is a :class:`ConfigConflictError` naming both. ``given_as`` says how the user
    gave ``value`` (``"DeepSpeedStrategy(gradient_clipping=1.0)"``)."""
    present = _get(config, dotted)
    if present is _MISSING:
        _set(config, dotted, value)
        return
    if present != value:
        raise ConfigConflictError(
            f"{given_as} conflicts with {source}, which sets {dotted}={present!r}: give the "
            "setting once (in the config or to the strategy), or the same value in both"
        )


def precision_settings(precision: Precision) -> tuple[str, torch.dtype]:
    """The DeepSpeed section (``"bf16"``, ``"fp16"`` or ``""`` for float32) and the dtype of the
    engine's module for the user's precision, read through its dtypes so that a third-party
    precision of the same kind maps the same way."""
    name = getattr(precision, "name", type(precision).__name__)
    compute, param = precision.compute_dtype, precision.param_dtype
    if param == torch.float32 and compute in (None, torch.float32):
        return "", torch.float32
    if param == torch.float32 and compute == torch.bfloat16:
        return "bf16", torch.bfloat16
    if param == torch.float32 and compute == torch.float16:
        return "fp16", torch.float16
    raise SelectionError(
        f"the deepspeed strategies run precision={name!r} (parameters {param}, compute "
        f"{compute}) in no DeepSpeed mode this plugin maps: choose one of "
        f"{', '.join(repr(p) for p in PRECISIONS)}. DeepSpeed keeps float32 master weights "
        "itself, so 'bf16-mixed' is what 'bf16-true' would be elsewhere"
    )


def build_config(
    user_config: Mapping[str, Any] | str | Path | None,
    *,
    precision: Precision,
    stage: int | None,
    offload_optimizer: bool,
    offload_parameters: bool,
    offload_device: OffloadDevice,
    nvme_path: str | None,
    gradient_clipping: float | None,
    gradient_accumulation_steps: int | None,
    train_micro_batch_size_per_gpu: int | None,
) -> tuple[dict[str, Any], torch.dtype]:
    """The DeepSpeed config to initialize with, and the dtype of the engine's module.

    Every argument that is not ``None`` (or ``False`` for the offloads) is written into the
    user's config; where the config already holds a different value, a
    :class:`ConfigConflictError` names both. Defaults fill what neither gives: ZeRO stage 2,
    one sample per micro-batch, no gradient clipping (DeepSpeed's own default clips at 1.0), and
    ``zero_allow_untested_optimizer`` (any torch optimizer)."""
    config, source = read_config(user_config)
    section, dtype = precision_settings(precision)
    name = getattr(precision, "name", type(precision).__name__)
    for other in ("bf16", "fp16"):
        enabled = _get(config, f"{other}.enabled")
        if enabled is _MISSING or not enabled:
            continue
        if other != section:
            raise ConfigConflictError(
                f"Runtime(precision={name!r}) conflicts with {source}, which sets "
                f"{other}.enabled=true: choose precision="
                f"{'bf16-mixed' if other == 'bf16' else '16-mixed'!r}, or remove the "
                f"{other!r} section from the config"
            )
    if section:
        merge(config, f"{section}.enabled", True, f"Runtime(precision={name!r})", source)
        if section == "fp16" and _get(config, "fp16.loss_scale") is _MISSING:
            # dynamic loss scaling (DeepSpeed's default), spelled out so that the config says it
            _set(config, "fp16.loss_scale", 0)
    if stage is not None:
        if stage not in (0, 1, 2, 3):
            raise SelectionError(
                f"DeepSpeedStrategy(stage={stage!r}) is not a ZeRO stage: 0 (data parallel), "
                "1 (optimizer states sharded), 2 (and gradients) or 3 (and parameters)"
            )
        merge(config, "zero_optimization.stage", stage, f"DeepSpeedStrategy(stage={stage})", source)
    elif _get(config, "zero_optimization.stage") is _MISSING:
        _set(config, "zero_optimization.stage", 2)
    chosen_stage = _get(config, "zero_optimization.stage")
    if offload_device not in ("cpu", "nvme"):
        raise SelectionError(
            f"DeepSpeedStrategy(offload_device={offload_device!r}) must be 'cpu' or 'nvme'"
        )
    if offload_device == "nvme" and (offload_optimizer or offload_parameters) and not nvme_path:
        raise SelectionError(
            "DeepSpeedStrategy(offload_device='nvme') needs nvme_path=..., a directory on a "
            "fast local disk where DeepSpeed swaps parameters and optimizer states"
        )
    for wanted, key, argument in (
        (offload_optimizer, "offload_optimizer", "offload_optimizer=True"),
        (offload_parameters, "offload_param", "offload_parameters=True"),
    ):
        if not wanted:
            continue
        if key == "offload_param" and chosen_stage != 3:
            raise SelectionError(
                f"DeepSpeedStrategy({argument}) needs ZeRO stage 3 (parameters are offloaded "
                f"only where they are sharded); the config has stage {chosen_stage}"
            )
        given = f"DeepSpeedStrategy({argument}, offload_device={offload_device!r})"
        merge(config, f"zero_optimization.{key}.device", offload_device, given, source)
        if offload_device == "nvme":
            merge(config, f"zero_optimization.{key}.nvme_path", nvme_path, given, source)
    if gradient_clipping is not None:
        merge(
            config,
            "gradient_clipping",
            float(gradient_clipping),
            f"DeepSpeedStrategy(gradient_clipping={gradient_clipping})",
            source,
        )
    if gradient_accumulation_steps is not None:
        merge(
            config,
            "gradient_accumulation_steps",
            int(gradient_accumulation_steps),
            f"DeepSpeedStrategy(gradient_accumulation_steps={gradient_accumulation_steps})",
            source,
        )
    if train_micro_batch_size_per_gpu is not None:
        merge(
            config,
            "train_micro_batch_size_per_gpu",
            int(train_micro_batch_size_per_gpu),
            f"DeepSpeedStrategy(train_micro_batch_size_per_gpu={train_micro_batch_size_per_gpu})",
            source,
        )
    if _get(config, "train_micro_batch_size_per_gpu") is _MISSING and (
        _get(config, "train_batch_size") is _MISSING
    ):
        # DeepSpeed needs a batch size only for its own data loader and its throughput log
        _set(config, "train_micro_batch_size_per_gpu", 1)
    if "gradient_clipping" not in config:
        # DeepSpeed 0.19 clips the global norm at 1.0 unless told otherwise; switchyard, as
        # torch, clips only when asked
        config["gradient_clipping"] = 0.0
    config.setdefault("zero_allow_untested_optimizer", True)
    return config, dtype


def zero_stage(config: Mapping[str, Any]) -> int:
    """The ZeRO stage of a config :func:`build_config` returned."""
    stage = _get(config, "zero_optimization.stage")
    return int(stage) if stage is not _MISSING else 0
