"""switchyard-cpu: the CPU accelerator plugin."""

from switchyard_cpu.accelerator import CPUAccelerator

__all__ = ["CPUAccelerator"]
