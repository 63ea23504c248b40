"""switchyard-ddp: data-parallel training with ``torch.nn.parallel.DistributedDataParallel``."""

from switchyard_ddp.strategy import DDPStrategy

__all__ = ["DDPStrategy"]
