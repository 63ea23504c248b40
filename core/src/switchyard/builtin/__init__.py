"""switchyard's built-in plugin: generic pieces that work with any accelerator.

Registered through the same public hooks as any third-party plugin, under the plugin name
``builtin``; nothing here has powers an outside plugin lacks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from switchyard.entries import (
    AcceleratorEntry,
    EnvironmentEntry,
    LoggerEntry,
    PrecisionEntry,
    StrategyEntry,
)
from switchyard.hookspecs import hookimpl

_PRECISIONS = "switchyard.builtin.precisions"


@hookimpl
def switchyard_accelerators() -> Iterator[AcceleratorEntry]:
    # a device a PyTorch extension registered (PrivateUse1) works with no plugin; a plugin for
    # it takes its place (the rules are in switchyard.builtin.torch_device)
    from switchyard.builtin import torch_device

    yield from torch_device.entries()


@hookimpl
def switchyard_strategies() -> Iterator[StrategyEntry]:
    yield StrategyEntry(
        name="single_device",
        factory="switchyard.builtin.single_device:SingleDeviceStrategy",
        description="One process on one device",
        distributed=False,
    )


@hookimpl
def switchyard_precisions() -> Iterator[PrecisionEntry]:
    yield PrecisionEntry(
        name="32-true",
        factory=f"{_PRECISIONS}:TruePrecision",
        init_args={"dtype": "float32"},
        description="float32 parameters and computation",
        aliases=("32",),
    )
    yield PrecisionEntry(
        name="64-true",
        factory=f"{_PRECISIONS}:TruePrecision",
        init_args={"dtype": "float64"},
        description="float64 parameters, inputs and computation",
        aliases=("64",),
    )
    yield PrecisionEntry(
        name="16-mixed",
        factory=f"{_PRECISIONS}:MixedPrecision",
        init_args={"dtype": "float16"},
        description="float32 parameters, float16 autocast, gradient scaling",
        aliases=("16",),
    )
    yield PrecisionEntry(
        name="bf16-mixed",
        factory=f"{_PRECISIONS}:MixedPrecision",
        init_args={"dtype": "bfloat16"},
        description="float32 parameters, bfloat16 autocast",
        aliases=("bf16",),
    )
    yield PrecisionEntry(
        name="16-true",
        factory=f"{_PRECISIONS}:TruePrecision",
        init_args={"dtype": "float16"},
        description="float16 parameters, inputs and computation",
    )
    yield PrecisionEntry(
        name="bf16-true",
        factory=f"{_PRECISIONS}:TruePrecision",
        init_args={"dtype": "bfloat16"},
        description="bfloat16 parameters, inputs and computation",
    )


_ENVIRONMENTS = "switchyard.builtin.environments"  # one module per scheduler


@hookimpl
def switchyard_environments() -> Iterator[EnvironmentEntry]:
    # Among detected environments the highest priority wins; the innermost launcher must win
    # (torchrun inside srun, mpirun inside an allocation). The table and its reasons are in
    # switchyard.builtin.environments (the package's docstring).
    yield EnvironmentEntry(
        name="torchelastic",
        factory=f"{_ENVIRONMENTS}.torchelastic:TorchElasticEnvironment",
        description="Processes started by torchrun (torch.distributed.elastic)",
        priority=100,
        detect_variables=("TORCHELASTIC_RUN_ID", "GROUP_RANK"),
        aliases=("torchrun",),
    )
    yield EnvironmentEntry(
        name="lsf",
        factory=f"{_ENVIRONMENTS}.lsf:LSFEnvironment",
        description="IBM Spectrum LSF jobs started with jsrun",
        priority=80,
        detect_variables=("LSB_JOBID",),
    )
    yield EnvironmentEntry(
        name="mpi",
        factory=f"{_ENVIRONMENTS}.mpi:MPIEnvironment",
        description="Processes started by mpirun (Open MPI, MPICH, Intel MPI)",
        priority=70,
        detect_variables=("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"),
    )
    yield EnvironmentEntry(
        name="slurm",
        factory=f"{_ENVIRONMENTS}.slurm:SLURMEnvironment",
        description="Slurm jobs started with srun, one task per device",
        priority=60,
        detect_variables=("SLURM_NTASKS",),
    )
    yield EnvironmentEntry(
        name="kubeflow",
        factory=f"{_ENVIRONMENTS}.kubeflow:KubeflowEnvironment",
        description="Kubeflow PyTorchJob pods, one node each; switchyard starts the processes",
        priority=20,
        detect_variables=("KUBERNETES_PORT",),
    )
    yield EnvironmentEntry(
        name="local",
        factory=f"{_ENVIRONMENTS}.local:LocalEnvironment",
        description="This machine; switchyard starts the processes",
        priority=0,
    )


@hookimpl
def switchyard_loggers() -> Iterator[LoggerEntry]:
    yield LoggerEntry(
        name="csv",
        factory="switchyard.builtin.csv_logger:CSVLogger",
        description="Metrics to logs/<name>/version_<n>/metrics.csv (standard library csv)",
    )
    yield LoggerEntry(
        name="tensorboard",
        factory="switchyard.builtin.tensorboard_logger:TensorBoardLogger",
        description="Metrics as TensorBoard scalars in logs/<name>/version_<n>",
        requires=("tensorboard",),
        aliases=("tb",),
    )


@hookimpl
def switchyard_env_report() -> Mapping[str, Any]:
    # what torch.distributed and the built-in cluster environments read to lay a job out
    return {
        "variables": (
            "MASTER_ADDR",
            "MASTER_PORT",
            "WORLD_SIZE",
            "RANK",
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
            "NODE_RANK",
            "GROUP_RANK",
            "TORCHELASTIC_",
            "SLURM_",
            "LSB_",
            "OMPI_COMM_WORLD_",
            "PMI_",
        )
    }
