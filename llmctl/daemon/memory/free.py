"""What is free now: host RAM from psutil, device memory from NVML (NVIDIA) or rocm-smi (AMD)
through observe/gpu.py's GpuProbe, the one place that talks to them. A machine without a GPU
has no devices here: NVML's library is missing or finds no device, which GpuProbe takes as
"none", never as an error.

Devices are named as llama.cpp names them in llama-fit-params' output: NVML's device i is
CUDA<i>, rocm-smi's card i is ROCm<i>. That pairing assumes both count devices in the same
order (CUDA's default is fastest-first, NVML's is PCI order: set CUDA_DEVICE_ORDER=PCI_BUS_ID
on a mixed multi-GPU box); it was not checked on a real GPU here.

`released_by(pid)`: what stopping a running llama-server gives back, its anonymous resident
memory (RSS minus the file-backed and shared part: a memory-mapped model stays in the page
cache, which `available` counts already).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil

from llmctl.daemon.memory.needs import MIB
from llmctl.daemon.observe.gpu import GpuProbe

_PREFIX = {"nvidia": "CUDA", "amd": "ROCm"}


@dataclass(frozen=True)
class Free:
    host: int  # MiB of RAM available now (psutil's `available`: free plus reclaimable)
    devices: dict[str, int] = field(default_factory=dict)  # MiB free per device

    def to_dict(self) -> dict[str, object]:
        return {"host_mib": self.host, "devices": dict(self.devices)}


class FreeMemory:
    def __init__(self, probe: GpuProbe | None = None):
        self.probe = probe or GpuProbe()

    def now(self) -> Free:
        return Free(psutil.virtual_memory().available // MIB, self.devices())

    def devices(self) -> dict[str, int]:
        return {f"{_PREFIX.get(gpu.vendor, gpu.vendor)}{gpu.index}":
                max(0, gpu.total - gpu.used) // MIB for gpu in self.probe.read()}


def released_by(pid: int | None) -> int:
    """MiB that stopping this process frees (0 when it is gone or unreadable)."""
    if pid is None:
        return 0
    try:
        info = psutil.Process(pid).memory_info()
    except (psutil.Error, OSError):
        return 0
    return max(0, info.rss - getattr(info, "shared", 0)) // MIB
