"""GPU memory for /metrics: NVIDIA through NVML (the `pynvml` module of nvidia-ml-py), AMD
through `rocm-smi`, and nothing at all on a machine with neither.

Both are looked up lazily, at the first scrape, and a machine without them is remembered as
such: no fake zeros, no series. NVML's library comes with the NVIDIA driver, so importing
pynvml succeeds everywhere and only `nvmlInit()` tells whether there is a GPU. Readings are
cached for a few seconds because rocm-smi is a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("llmctld.proxy")

CACHE_SECONDS = 5.0
ROCM_SMI_TIMEOUT = 3.0


@dataclass(frozen=True)
class GpuMemory:
    index: int
    name: str
    vendor: str
    used: int  # bytes
    total: int  # bytes


class GpuProbe:
    def __init__(self, load_nvml: Callable[[], Any] | None = None,
                 rocm_smi: str | None = None, clock: Callable[[], float] = time.monotonic):
        self._load_nvml = load_nvml or _import_nvml
        self._rocm_smi = rocm_smi
        self._clock = clock
        self._nvml: Any = None
        self._probed = False
        self._cached: list[GpuMemory] = []
        self._read_at = float("-inf")

    def read(self) -> list[GpuMemory]:
        now = self._clock()
        if now - self._read_at < CACHE_SECONDS:
            return self._cached
        if not self._probed:
            self._probe()
        found: list[GpuMemory] = []
        if self._nvml is not None:
            found += self._read_nvml()
        if self._rocm_smi is not None:
            found += self._read_rocm()
        self._cached, self._read_at = found, now
        return found

    def _probe(self) -> None:
        self._probed = True
        try:
            nvml = self._load_nvml()
            nvml.nvmlInit()
        except Exception as e:  # no module, no driver, no device: all mean "no NVIDIA GPU"
            log.debug("no NVIDIA GPU metrics: %s", e)
        else:
            self._nvml = nvml
        if self._rocm_smi is None:
            self._rocm_smi = shutil.which("rocm-smi")

    def _read_nvml(self) -> list[GpuMemory]:
        nvml = self._nvml
        found = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                found.append(GpuMemory(index, name.decode() if isinstance(name, bytes) else
                                       str(name), "nvidia", int(memory.used),
                                       int(memory.total)))
        except Exception as e:  # a GPU that fell off the bus must not break /metrics
            log.warning("reading NVIDIA GPU memory failed: %s", e)
        return found

    def _read_rocm(self) -> list[GpuMemory]:
        assert self._rocm_smi is not None
        try:
            out = subprocess.run([self._rocm_smi, "--showmeminfo", "vram", "--json"],
                                 capture_output=True, timeout=ROCM_SMI_TIMEOUT, check=True).stdout
            return parse_rocm_smi(out)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            log.warning("reading AMD GPU memory with rocm-smi failed: %s", e)
            return []

    def collect(self) -> Iterator[Any]:
        gpus = self.read()
        if not gpus:
            return
        from prometheus_client.core import GaugeMetricFamily

        used = GaugeMetricFamily("llmctl_gpu_memory_used_bytes", "GPU memory in use",
                                 labels=["gpu", "name", "vendor"])
        total = GaugeMetricFamily("llmctl_gpu_memory_total_bytes", "GPU memory in total",
                                  labels=["gpu", "name", "vendor"])
        for gpu in gpus:
            labels = [str(gpu.index), gpu.name, gpu.vendor]
            used.add_metric(labels, float(gpu.used))
            total.add_metric(labels, float(gpu.total))
        yield used
        yield total


def parse_rocm_smi(output: bytes) -> list[GpuMemory]:
    """`rocm-smi --showmeminfo vram --json`: {"card0": {"VRAM Total Memory (B)": "...",
    "VRAM Total Used Memory (B)": "..."}, ...}."""
    doc = json.loads(output)
    found = []
    for card, fields in sorted(doc.items()):
        if not (card.startswith("card") and card[4:].isdigit() and isinstance(fields, dict)):
            continue
        total, used = fields.get("VRAM Total Memory (B)"), fields.get("VRAM Total Used Memory (B)")
        if total is None or used is None:
            continue
        found.append(GpuMemory(int(card[4:]), card, "amd", int(used), int(total)))
    return found


# where an NVIDIA driver shows itself on Linux: its kernel module, its control device, WSL's
# GPU bridge (WSL has no /proc/driver/nvidia but NVML works through /dev/dxg)
DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")


def _import_nvml() -> Any:
    """pynvml, where NVML can work. Importing it costs ~2 MB (ctypes and its bindings) in
    each process that reads GPU memory (the lifecycle worker's memory check, the proxy's
    listing and /metrics), so on Linux without any sign of the NVIDIA driver it is not
    imported at all: nvmlInit() would fail there anyway."""
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in DRIVER_PATHS):
        raise ImportError(f"no NVIDIA driver (none of {', '.join(DRIVER_PATHS)})")
    import pynvml

    return pynvml
