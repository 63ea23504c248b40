"""``xla_spmd``: one process driving every XLA device through a sharded device mesh.

XLA's SPMD partitioner (GSPMD) compiles one program for the whole mesh from sharding
annotations: the batch is split along the mesh's ``data`` axis as it is loaded, and parameters
are replicated (data parallel) or, with ``parameters="sharded"``, split along their first
dimension over the same axis (as FSDP shards them, the compiler gathering what each operation
needs). The gradient reductions are the compiler's; the user's step is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.utils.data import DataLoader

from switchyard import Precision, SelectionError
from switchyard.accelerator import Accelerator
from switchyard.environment import ClusterEnvironment
from switchyard_xla.dataloading import XLADeviceLoader
from switchyard_xla.strategy import XLAStepStrategy

ParameterLayout = Literal["replicated", "sharded"]

DATA_AXIS = "data"
"""The mesh axis batches are split along (and sharded parameters too)."""


class BatchSharding:
    """How ``MpDeviceLoader`` shards each batch tensor: its first dimension along the mesh's
    ``data`` axis, the others replicated. torch_xla's own ``ShardingSpec`` takes tensors of one
    rank only; a batch holds inputs and labels of different ranks."""

    minibatch = False

    def __init__(self, mesh: Any) -> None:
        self.mesh = mesh
        self._specs: dict[int, Any] = {}

    def spec(self, rank: int) -> Any:
        import torch_xla.distributed.spmd as xs

        if rank not in self._specs:
            self._specs[rank] = xs.ShardingSpec(self.mesh, (DATA_AXIS,) + (None,) * (rank - 1))
        return self._specs[rank]

    def xla_spec(self, tensor: torch.Tensor) -> Any:
        if tensor.dim() == 0 or tensor.shape[0] % self.mesh.shape()[DATA_AXIS] != 0:
            return None  # replicated: a scalar, or a batch the axis does not divide
        return self.spec(tensor.dim()).xla_spec(tensor)


class XLASPMDStrategy(XLAStepStrategy):
    """Every XLA device of the host (or of the slice), as one mesh, from one process.

    Args:
        mesh_shape: the mesh's shape, as many devices as there are; default ``(n, 1)`` over
            all ``n`` devices, axes ``("data", "model")``.
        axis_names: the mesh's axis names; one must be ``"data"``.
        parameters: ``"replicated"`` (data parallel) or ``"sharded"``: each parameter whose
            first dimension the ``data`` axis divides is split along it.

    ``devices`` counts processes, which is one: the mesh takes every device torch_xla sees
    (``CPU_NUM_DEVICES`` CPU devices, the host's TPU chips).
    """

    def __init__(
        self,
        mesh_shape: Sequence[int] | None = None,
        axis_names: Sequence[str] = (DATA_AXIS, "model"),
        parameters: ParameterLayout = "replicated",
    ) -> None:
        if parameters not in ("replicated", "sharded"):
            raise SelectionError(
                f"xla_spmd parameters={parameters!r} is not 'replicated' or 'sharded'"
            )
        if DATA_AXIS not in axis_names:
            raise SelectionError(
                f"xla_spmd axis_names={tuple(axis_names)!r} has no {DATA_AXIS!r} axis, along "
                "which batches are split"
            )
        self.mesh_shape = None if mesh_shape is None else tuple(int(n) for n in mesh_shape)
        self.axis_names = tuple(axis_names)
        self.parameters: ParameterLayout = parameters
        self.mesh: Any = None
        """The ``torch_xla`` device mesh over every device, built when the environment is set
        up (``None`` before)."""

    def bind(
        self,
        *,
        accelerator: Accelerator,
        precision: Precision,
        environment: ClusterEnvironment,
        devices: Sequence[torch.device],
        num_nodes: int,
    ) -> None:
        super().bind(
            accelerator=accelerator,
            precision=precision,
            environment=environment,
            devices=devices,
            num_nodes=num_nodes,
        )
        if len(self.devices) != 1:
            raise SelectionError(
                f"strategy 'xla_spmd' with devices={len(self.devices)}: it runs one process "
                "that drives every XLA device through its mesh; pass devices=1 (the mesh takes "
                "all the devices torch_xla sees: CPU_NUM_DEVICES on XLA's CPU device)"
            )

    @property
    def root_device(self) -> torch.device:
        return torch.device("xla", 0)  # SPMD's virtual device, which stands for the mesh

    def setup_environment(self) -> None:
        import numpy as np
        import torch_xla.distributed.spmd as xs
        import torch_xla.runtime as xr

        # before any XLA tensor exists, or torch_xla replicates those onto the mesh
        xr.use_spmd()
        count = int(xr.global_runtime_device_count())
        shape = self.mesh_shape or (count,) + (1,) * (len(self.axis_names) - 1)
        if len(shape) != len(self.axis_names) or int(np.prod(shape)) != count:
            raise SelectionError(
                f"xla_spmd mesh_shape={shape} with axes {self.axis_names} does not cover the "
                f"{count} XLA devices; give one size per axis, multiplying to {count}"
            )
        self.mesh = xs.Mesh(np.arange(count), shape, self.axis_names)
        xs.set_global_mesh(self.mesh)
        super().setup_environment()

    def setup_module(self, module: nn.Module) -> nn.Module:
        if self.parameters == "sharded":
            import torch_xla.distributed.spmd as xs

            ways = self.mesh.shape()[DATA_AXIS]
            for parameter in module.parameters():
                if parameter.dim() >= 1 and parameter.shape[0] % ways == 0:
                    # annotates the tensor in place: the Parameter objects stay the module's
                    xs.mark_sharding(
                        parameter, self.mesh, (DATA_AXIS,) + (None,) * (parameter.dim() - 1)
                    )
        return module

    def process_dataloader(self, dataloader: DataLoader[Any]) -> DataLoader[Any]:
        loader = XLADeviceLoader(dataloader, self.root_device, BatchSharding(self.mesh))
        return cast("DataLoader[Any]", loader)
