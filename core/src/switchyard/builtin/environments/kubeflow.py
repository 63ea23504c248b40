"""Pods of a Kubeflow ``PyTorchJob`` whose command runs Python directly."""

from __future__ import annotations

import os
import re

from switchyard.builtin.environments.common import (
    address_variable,
    check_layout_consistency,
    optional_rank_variable,
    optional_size_variable,
    port_variable,
    rank_variable,
    size_variable,
)
from switchyard.environment import ClusterEnvironment
from switchyard.errors import SelectionError
from switchyard.validation import MAX_DEVICES_PER_NODE, MAX_NUM_NODES

_KUBEFLOW_VARS = ("KUBERNETES_PORT", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
_NOT_KUBEFLOW_VARS = ("LOCAL_RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID")
_OPERATOR = "the PyTorchJob operator"
# nprocPerNode values that are not a number: torchrun's own words (one process then)
_NPROC_WORDS = ("auto", "cpu", "gpu", "xpu")
_ELASTIC_NNODES = re.compile(r"[0-9]+:[0-9]+")


class KubeflowEnvironment(ClusterEnvironment):
    """A pod of a Kubeflow ``PyTorchJob`` (training-operator) whose command runs Python
    directly; each pod is one node and switchyard starts the processes of its devices.

    The operator sets in every pod ``MASTER_ADDR``/``MASTER_PORT`` (the master pod's service),
    ``RANK`` (the pod's index: master 0, worker *i* is *i + 1*) and ``WORLD_SIZE``; operator
    v1.7 and later add ``PET_NNODES`` (pods), ``PET_NODE_RANK`` (= ``RANK``) and
    ``PET_NPROC_PER_NODE`` (``spec.nprocPerNode``, default ``auto``), and then set
    ``WORLD_SIZE`` to pods x ``nprocPerNode`` when that is a number (older operators, and
    ``auto``: the number of pods). Kubernetes adds ``KUBERNETES_PORT`` to every pod.

    Detected when ``KUBERNETES_PORT``, ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` and
    ``RANK`` are set but none of ``LOCAL_RANK``, ``GROUP_RANK``, ``TORCHELASTIC_RUN_ID``
    (a pod whose command is ``torchrun`` gets the ``torchelastic`` environment in its workers).

    Unlike Lightning's ``KubeflowEnvironment`` (one process per pod, started by the operator,
    and never auto-detected), a pod may hold several devices: ``creates_processes_externally``
    is ``False``, the node rank is the pod's ``RANK`` and the world size is pods x devices,
    set by the strategy. With one device per pod the ranks are exactly Lightning's. In the
    processes switchyard starts, ``RANK`` becomes the process's global rank, so the node rank is
    read from ``NODE_RANK`` (which switchyard's launchers export) or ``PET_NODE_RANK`` first.
    """

    def __init__(self) -> None:
        self._world_size: int | None = None
        self._global_rank: int | None = None

    @classmethod
    def detect(cls) -> bool:
        return all(n in os.environ for n in _KUBEFLOW_VARS) and not any(
            n in os.environ for n in _NOT_KUBEFLOW_VARS
        )

    @property
    def creates_processes_externally(self) -> bool:
        return False

    @property
    def main_address(self) -> str:
        address = address_variable("MASTER_ADDR", "")
        if not address:
            raise SelectionError(
                "MASTER_ADDR is not set; the PyTorchJob operator sets it to the master pod's "
                "service. Is this a PyTorchJob pod with a Master replica?"
            )
        return address

    @property
    def main_port(self) -> int:
        return port_variable("MASTER_PORT", _OPERATOR)

    @staticmethod
    def processes_per_pod() -> int:
        """``nprocPerNode`` when the job spells it as a number, else 1 (``auto``, ``cpu``,
        ``gpu``, ``xpu``, or unset)."""
        text = os.environ.get("PET_NPROC_PER_NODE", "").strip()
        if text.lower() in ("", *_NPROC_WORDS):
            return 1
        value = optional_size_variable("PET_NPROC_PER_NODE", _OPERATOR, MAX_DEVICES_PER_NODE)
        return value or 1

    def num_pods(self) -> int:
        """Pods of the job (master and workers), each one node."""
        text = os.environ.get("PET_NNODES", "").strip()
        if text and not _ELASTIC_NNODES.fullmatch(text):
            pods = optional_size_variable("PET_NNODES", _OPERATOR, MAX_NUM_NODES)
            if pods is not None:
                return pods
        return size_variable("WORLD_SIZE", _OPERATOR) // self.processes_per_pod()

    def world_size(self) -> int:
        if self._world_size is not None:
            return self._world_size
        return self.num_pods() * self.processes_per_pod()

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        if self._global_rank is not None:
            return self._global_rank
        return self.node_rank() * self.processes_per_pod() + self.local_rank()

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank

    def local_rank(self) -> int:
        return optional_rank_variable("LOCAL_RANK", "switchyard's launcher") or 0

    def local_world_size(self) -> int | None:
        return optional_size_variable("LOCAL_WORLD_SIZE", _OPERATOR, MAX_DEVICES_PER_NODE)

    def node_rank(self) -> int:
        for name in ("NODE_RANK", "PET_NODE_RANK"):
            value = optional_rank_variable(name, _OPERATOR)
            if value is not None:
                return value
        return rank_variable("RANK", _OPERATOR)

    def _check_layout(self) -> None:
        """Inconsistent variables in the processes switchyard starts in a pod (``LOCAL_RANK``
        at or above ``LOCAL_WORLD_SIZE``) fail here, before any store is created
        (:func:`check_layout_consistency`); the pod's own ``RANK`` is checked against the
        number of pods by :meth:`validate_settings`."""
        per_node = self.local_world_size()
        if per_node is not None and "LOCAL_RANK" in os.environ:
            check_layout_consistency(
                "switchyard's launcher",
                rank=("LOCAL_RANK", self.local_rank()),
                world_size=("LOCAL_WORLD_SIZE", per_node),
            )

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        self._check_layout()
        nnodes = os.environ.get("PET_NNODES", "").strip()
        if _ELASTIC_NNODES.fullmatch(nnodes):
            raise SelectionError(
                f"this PyTorchJob is elastic (PET_NNODES={nnodes!r}); its pods must run the "
                "script through torchrun, which reads the PET_* variables: set the container "
                "command to `torchrun train.py` (switchyard then detects 'torchelastic')"
            )
        pods = self.num_pods()
        if pods != num_nodes:
            raise SelectionError(
                f"the PyTorchJob has {pods} pod(s) (master and workers), each one node, but "
                f"the runtime asks for num_nodes={num_nodes}. Either pass num_nodes={pods}, or "
                f"give the job {num_nodes} replicas in all (1 Master + {num_nodes - 1} Worker)"
            )
        nproc_text = os.environ.get("PET_NPROC_PER_NODE", "").strip().lower()
        nproc = None if nproc_text in ("", *_NPROC_WORDS) else self.processes_per_pod()
        if nproc is not None and nproc != num_devices:
            raise SelectionError(
                f"the PyTorchJob sets nprocPerNode: {nproc}, but the runtime asks for "
                f"devices={num_devices} per pod. Either pass devices={nproc}, or set "
                f'nprocPerNode: "{num_devices}" (or "auto") in the job spec'
            )
        node_rank = self.node_rank()
        if node_rank >= pods:
            raise SelectionError(
                f"this pod's RANK={node_rank} is not below the number of pods ({pods}); the "
                "PyTorchJob variables are inconsistent. Do not override RANK or WORLD_SIZE in "
                "the pod spec"
            )
