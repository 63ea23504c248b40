"""Launchers built into core: both use PyTorch's own process machinery.

:class:`TorchrunLauncher` re-runs the user's script through ``torch.distributed.run`` (what the
``torchrun`` command runs); :class:`MultiprocessingLauncher` runs a function in processes started
by ``torch.multiprocessing``. Every worker of the former runs the script through
:mod:`switchyard.launchers.worker`, which also decides how the worker ends.
"""

from switchyard.launchers.multiprocessing import MultiprocessingLauncher
from switchyard.launchers.torchrun import TorchrunLauncher

__all__ = ["MultiprocessingLauncher", "TorchrunLauncher"]
