"""Cluster environments built into core, registered through ``switchyard_environments``; one
module per scheduler, what they share in :mod:`~switchyard.builtin.environments.common`.

Each environment answers, from the variables its scheduler or launcher exports, where the
rendezvous is (``main_address``, ``main_port``) and where this process sits (ranks and sizes).
None of them writes ``os.environ``: the strategy exports ``MASTER_ADDR``/``MASTER_PORT`` from
:attr:`~switchyard.ClusterEnvironment.main_address` and ``main_port`` when it creates the process
group. ``detect()`` reads only variables; LSF also reads the rank file its variable points to.

Priorities (higher wins among the detected ones; set in :mod:`switchyard.builtin`). The rule is
*the innermost launcher wins*: the program that started this very process describes it better
than an allocation around it.

===============  ========  ==================================================================
name             priority  why there
===============  ========  ==================================================================
``torchelastic``  100      torchrun is often started by srun, jsrun, mpirun or in a pod; its
                           variables describe the worker, the outer ones describe torchrun.
``lsf``            80      jsrun also exports ``OMPI_COMM_WORLD_*`` (its MPI is Open MPI based);
                           LSF finds the main address in the rank file, MPI would need
                           ``MASTER_ADDR``.
``mpi``            70      ``mpirun`` inside a Slurm allocation starts its daemons with srun, so
                           its processes inherit the variables of that daemon step (one task per
                           node); the MPI variables are the true ones.
``slurm``          60      srun.
``kubeflow``       20      only generic names (``MASTER_ADDR``, ``RANK``...) plus a Kubernetes
                           variable; anything more specific must win.
``local``           0      the fallback, always detected.
===============  ========  ==================================================================
"""

import importlib
from typing import TYPE_CHECKING, Any

# Each environment's module is imported on first use, so that selecting the environment imports
# only the one detected (and the detection of the others, through their entries'
# detect_variables, imports nothing).
_MODULE_OF = {
    "derived_port": "common",
    "find_free_port": "common",
    "KubeflowEnvironment": "kubeflow",
    "LocalEnvironment": "local",
    "LSFEnvironment": "lsf",
    "MPIEnvironment": "mpi",
    "SLURMEnvironment": "slurm",
    "expand_hostlist": "slurm",
    "first_host": "slurm",
    "iter_hostlist": "slurm",
    "parse_tasks_per_node": "slurm",
    "TorchElasticEnvironment": "torchelastic",
}

if TYPE_CHECKING:
    from switchyard.builtin.environments.common import derived_port, find_free_port
    from switchyard.builtin.environments.kubeflow import KubeflowEnvironment
    from switchyard.builtin.environments.local import LocalEnvironment
    from switchyard.builtin.environments.lsf import LSFEnvironment
    from switchyard.builtin.environments.mpi import MPIEnvironment
    from switchyard.builtin.environments.slurm import (
        SLURMEnvironment,
        expand_hostlist,
        first_host,
        iter_hostlist,
        parse_tasks_per_node,
    )
    from switchyard.builtin.environments.torchelastic import TorchElasticEnvironment


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LocalEnvironment",
    "MPIEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "derived_port",
    "expand_hostlist",
    "find_free_port",
    "first_host",
    "iter_hostlist",
    "parse_tasks_per_node",
]
