"""The hook implementations switchyard discovers through the ``switchyard`` entry point
``deepspeed``. Listing them imports nothing of DeepSpeed: the entries name the strategy by a
``"module:attr"`` string and require the ``deepspeed`` module."""

from __future__ import annotations

from collections.abc import Iterator

from switchyard import StrategyEntry, hookimpl
from switchyard.entries import CheckpointFormatEntry

_FACTORY = "switchyard_deepspeed.strategy:DeepSpeedStrategy"

_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")

_VARIANTS: tuple[tuple[str, str, dict[str, object], bool], ...] = (
    (
        "deepspeed",
        "DeepSpeed; ZeRO stage 2 unless its config (config=...) says otherwise",
        {},
        False,
    ),
    ("deepspeed_stage_1", "DeepSpeed ZeRO-1: optimizer states sharded", {"stage": 1}, False),
    (
        "deepspeed_stage_2",
        "DeepSpeed ZeRO-2: optimizer states and gradients sharded",
        {"stage": 2},
        False,
    ),
    (
        "deepspeed_stage_2_offload",
        "DeepSpeed ZeRO-2 with the optimizer (states and step) offloaded to CPU memory",
        {"stage": 2, "offload_optimizer": True},
        False,
    ),
    (
        "deepspeed_stage_3",
        "DeepSpeed ZeRO-3: optimizer states, gradients and parameters sharded",
        {"stage": 3},
        True,
    ),
    (
        "deepspeed_stage_3_offload",
        "DeepSpeed ZeRO-3 with optimizer and parameters offloaded to CPU memory",
        {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
        True,
    ),
    (
        "deepspeed_stage_3_offload_nvme",
        "DeepSpeed ZeRO-3 with optimizer and parameters offloaded to NVMe (needs libaio; nvme_path=...)",
        {
            "stage": 3,
            "offload_optimizer": True,
            "offload_parameters": True,
            "offload_device": "nvme",
        },
        True,
    ),
)


@hookimpl
def switchyard_strategies() -> Iterator[StrategyEntry]:
    for name, description, init_args, sharded in _VARIANTS:
        yield StrategyEntry(
            name=name,
            factory=_FACTORY,
            description=description,
            init_args={"start_method": "popen", **init_args},
            requires=("deepspeed",),
            precisions=_PRECISIONS,
            distributed=True,
            sharded=sharded,
        )


@hookimpl
def switchyard_checkpoint_formats() -> CheckpointFormatEntry:
    # checkpoint.META_FILENAME, spelled out: discovery imports this module only
    return CheckpointFormatEntry(
        name="deepspeed",
        marker="switchyard-deepspeed.json",
        load_full="switchyard_deepspeed.checkpoint:load_full",
        requires=("deepspeed",),
    )
