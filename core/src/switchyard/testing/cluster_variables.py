"""The environment variables through which launchers and schedulers describe a job.

A test of environment detection, or a child process a test starts, must see only the variables
it sets itself: one left over from the shell (``SLURM_JOB_ID`` of an interactive allocation,
``RANK`` of an outer torchrun) would make a different cluster environment apply.
"""

from __future__ import annotations

PREFIXES = (
    "SLURM",  # SLURM_* and SLURMD_*
    "LSB_",
    "LSF_",
    "JSM_",
    "OMPI_",
    "PMI_",
    "PMIX_",
    "MPI_",
    "HYDRA_",
    "I_MPI_",
    "TORCHELASTIC_",
    "PET_",
    "KUBERNETES_",
)
"""Prefixes of the variables Slurm, LSF/jsrun, Open MPI, MPICH/Hydra, Intel MPI, torchrun and
Kubeflow's operator export."""

NAMES = frozenset(
    {
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_RANK",
        "ROLE_NAME",
        "ROLE_WORLD_SIZE",
        "NODE_RANK",
    }
)
"""The torchrun-style variables any launcher may export."""


def is_cluster_variable(name: str) -> bool:
    """Whether ``name`` is one of the variables that describe a job (see the module)."""
    return name in NAMES or name.startswith(PREFIXES)
