"""Processes started by ``mpirun``/``mpiexec`` (Open MPI, MPICH, Intel MPI)."""

from __future__ import annotations

import os

from switchyard.builtin.environments.common import (
    SchedulerManaged,
    address_variable,
    check_layout_consistency,
    derived_port,
    first_set,
    rank_variable,
    size_variable,
    user_port,
)
from switchyard.environment import DEFAULT_MAIN_PORT
from switchyard.errors import SelectionError
from switchyard.validation import MAX_DEVICES_PER_NODE

_OPEN_MPI_VARS = (
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
)
_HYDRA_VARS = ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")


class MPIEnvironment(SchedulerManaged):
    """Processes started by ``mpirun``/``mpiexec``: Open MPI, or MPICH and Intel MPI (Hydra).

    Needs no MPI library in Python: the launchers export the layout. Open MPI:
    ``OMPI_COMM_WORLD_SIZE``, ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_LOCAL_RANK``,
    ``OMPI_COMM_WORLD_LOCAL_SIZE`` (``OMPI_COMM_WORLD_NODE_RANK`` is *not* a node index, it is
    the process's rank on its node across all jobs, and is not used). Hydra: ``PMI_SIZE``,
    ``PMI_RANK``, ``MPI_LOCALRANKID``, ``MPI_LOCALNRANKS``. The node rank is
    ``rank // local size``, which holds for the usual block placement (``--map-by slot``,
    ``-ppn``); :meth:`validate_settings` rejects round-robin placement.

    MPI exports no rendezvous address: ``MASTER_ADDR`` must be passed to every process for
    several nodes (``mpirun -x MASTER_ADDR=...``, ``mpiexec -genv MASTER_ADDR ...``); on one
    node it defaults to ``127.0.0.1``. The port is ``MASTER_PORT``, else :func:`derived_port`
    of the job's PMIx namespace (``PMIX_NAMESPACE`` or ``OMPI_MCA_ess_base_jobid``, the same in
    every process of one job), else 29500.
    """

    _launcher = "mpirun"

    @classmethod
    def detect(cls) -> bool:
        return all(n in os.environ for n in _OPEN_MPI_VARS) or all(
            n in os.environ for n in _HYDRA_VARS
        )

    @staticmethod
    def _names() -> tuple[str, str, str, str]:
        """(size, rank, local rank, local size) variable names of the MPI that started us."""
        if all(n in os.environ for n in _OPEN_MPI_VARS):
            return _OPEN_MPI_VARS
        return _HYDRA_VARS

    @property
    def main_address(self) -> str:
        return address_variable("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        port = user_port()
        if port is not None:
            return port
        found = first_set("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid")
        return derived_port(found[1]) if found else DEFAULT_MAIN_PORT

    def world_size(self) -> int:
        return size_variable(self._names()[0], self._launcher)

    def global_rank(self) -> int:
        return rank_variable(self._names()[1], self._launcher)

    def local_rank(self) -> int:
        return rank_variable(self._names()[2], self._launcher)

    def local_world_size(self) -> int:
        """Processes of this job on this node."""
        return size_variable(self._names()[3], self._launcher, MAX_DEVICES_PER_NODE)

    def node_rank(self) -> int:
        return self.global_rank() // max(self.local_world_size(), 1)

    def _check_layout(self) -> None:
        """Inconsistent MPI variables (a rank at or above the size...) fail here, before any
        store is created (:func:`check_layout_consistency`)."""
        size, rank, local_rank, local_size = self._names()
        check_layout_consistency(
            self._launcher,
            rank=(rank, self.global_rank()),
            world_size=(size, self.world_size()),
            local_rank=(local_rank, self.local_rank()),
            local_world_size=(local_size, self.local_world_size()),
        )

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        self._check_layout()
        world, per_node = self.world_size(), self.local_world_size()
        if world != num_devices * num_nodes or per_node != num_devices:
            raise SelectionError(
                f"mpirun started {world} process(es), {per_node} on this node, but the runtime "
                f"asks for devices={num_devices} x num_nodes={num_nodes} = "
                f"{num_devices * num_nodes}. Either match devices= and num_nodes= to mpirun, or "
                f"run mpirun -np {num_devices * num_nodes} --map-by ppr:{num_devices}:node "
                f"(Hydra: mpiexec -n {num_devices * num_nodes} -ppn {num_devices})"
            )
        rank, local_rank = self.global_rank(), self.local_rank()
        if rank % per_node != local_rank:
            _, rank_name, local_name, local_size_name = self._names()
            raise SelectionError(
                f"mpirun placed ranks round-robin over the nodes ({rank_name}={rank} is "
                f"{local_name}={local_rank} of {local_size_name}={per_node}), so node ranks "
                "cannot be derived. Place "
                f"consecutive ranks on the same node: mpirun --map-by ppr:{num_devices}:node "
                f"(Hydra: -ppn {num_devices})"
            )
        if num_nodes > 1 and not os.environ.get("MASTER_ADDR"):
            raise SelectionError(
                f"this MPI job spans {num_nodes} nodes, but MASTER_ADDR is not set, so the "
                "processes cannot find rank 0. Pass the first node's host name to every "
                "process: mpirun -x MASTER_ADDR=<host of rank 0> (Hydra: mpiexec -genv "
                "MASTER_ADDR <host>), optionally with MASTER_PORT"
            )
