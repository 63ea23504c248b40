"""An accelerator whose device is not "shallow-copy compatible" with the CPU.

Moving a module to a PrivateUse1 device (OpenReg, a vendor's extension) or to XLA makes
``module.to(device)`` create new ``Parameter`` objects instead of swapping the tensors inside the
old ones. torch has a switch that makes every move behave that way
(``torch.__future__.set_overwrite_module_params_on_conversion``); this accelerator turns it on
from ``setup_device`` to ``teardown``, so that an optimizer created before ``runtime.setup``
holds parameters the module no longer has, as it would on such a device. The tensors stay on the
host CPU: this is a stand-in for hardware that is not on this machine.
"""

from __future__ import annotations

import torch

from switchyard_cpu import CPUAccelerator


class FreshParametersAccelerator(CPUAccelerator):
    """The CPU, with module moves that replace every ``Parameter`` object."""

    def __init__(self) -> None:
        self._previous: bool | None = None

    def setup_device(self, device: torch.device) -> None:
        super().setup_device(device)
        self._previous = torch.__future__.get_overwrite_module_params_on_conversion()
        torch.__future__.set_overwrite_module_params_on_conversion(True)

    def teardown(self) -> None:
        if self._previous is not None:
            torch.__future__.set_overwrite_module_params_on_conversion(self._previous)
            self._previous = None
        super().teardown()
