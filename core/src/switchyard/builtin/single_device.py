"""The ``single_device`` strategy: one process driving one device."""

from __future__ import annotations

import torch

from switchyard.strategy import Strategy


class SingleDeviceStrategy(Strategy):
    """Runs everything in the current process on the one selected device. Works with any
    accelerator; collectives are identities."""

    @property
    def root_device(self) -> torch.device:
        return self.devices[0]
