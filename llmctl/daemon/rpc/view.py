"""The proxy worker's mirror of the RPC workers' health, from the lifecycle worker's
RpcHealth broadcasts (and its Status reply, a new proxy's first look): what /status,
/models, /metrics and the dashboard show, and the refusal of a switch that needs a worker
that is not there, before it reaches the lifecycle worker (which checks again itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llmctl.daemon.rpc.records import WorkerHealth, refusal


class RpcView:
    def __init__(self) -> None:
        self.workers: dict[str, WorkerHealth] = {}

    def apply(self, workers: list[Any]) -> None:
        self.workers = {w.name: w for w in (WorkerHealth.from_dict(d) for d in workers
                                           if isinstance(d, dict) and "name" in d)}

    def public(self) -> list[dict[str, Any]]:
        return [w.public() for w in self.workers.values()]

    def refusal(self, model: str, cfg: dict[str, Any] | None) -> str | None:
        return refusal(model, cfg, self.workers) if cfg else None

    def collect(self) -> Iterator[Any]:
        """Gauges for /metrics (prometheus_client is imported by the caller already)."""
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("llmctl_rpc_worker_up", "1 when the RPC worker answered its "
                               "last check (or our llama-server holds a live connection to "
                               "it), 0 when it is busy, down or not checked yet",
                               labels=["worker", "address", "state"])
        free = GaugeMetricFamily("llmctl_rpc_worker_memory_free_bytes", "Free memory of "
                                 "each device of an RPC worker, as it last said",
                                 labels=["worker", "device"])
        total = GaugeMetricFamily("llmctl_rpc_worker_memory_total_bytes", "Memory of each "
                                  "device of an RPC worker", labels=["worker", "device"])
        for w in self.workers.values():
            up.add_metric([w.name, w.address, w.state], 1.0 if w.up else 0.0)
            for index, device in enumerate(w.devices):
                free.add_metric([w.name, str(index)], float(device.get("free", 0)))
                total.add_metric([w.name, str(index)], float(device.get("total", 0)))
        yield from (up, free, total)
