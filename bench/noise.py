"""Noise you can see: how much CPU the rest of the machine used while a round ran.

The bench shares 2 cores with whatever else runs there. For every measured round it notes the
machine's busy CPU time (psutil.cpu_times) minus the CPU time of the bench's own process tree
(the bench, llmctld and its workers, every llama-server, nginx, the router): what is left was
used by processes outside the run. A round where that exceeds DISTURBED_CORES is flagged, and
the interleaved loops run it once more (within a budget), so a burst from a neighbour does
not decide a ratio. Figures are then the median over rounds, with the spread beside them.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

DISTURBED_CORES = 0.25  # outside CPU, in cores averaged over the round, that flags a round


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def _tree_cpu(root: psutil.Process) -> dict[int, float]:
    out: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system + t.children_user + t.children_system
    return out


@dataclass
class Round:
    label: str
    seconds: float = 0.0
    outside_cores: float = 0.0  # CPU used by processes outside the run, in cores
    ours_cores: float = 0.0
    disturbed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "seconds": round(self.seconds, 3),
                "outside_cores": round(self.outside_cores, 3),
                "ours_cores": round(self.ours_cores, 3), "disturbed": self.disturbed}


@dataclass
class Meter:
    """Measures rounds (`with meter.round(label) as r:`) and keeps them all."""

    threshold: float = DISTURBED_CORES
    rounds: list[Round] = field(default_factory=list)
    me: psutil.Process = field(default_factory=lambda: psutil.Process(os.getpid()))

    @contextlib.contextmanager
    def round(self, label: str) -> Iterator[Round]:
        r = Round(label)
        ours0 = _tree_cpu(self.me)
        busy0 = _busy_seconds()
        t0 = time.perf_counter()
        try:
            yield r
        finally:
            wall = time.perf_counter() - t0
            busy = _busy_seconds() - busy0
            ours1 = _tree_cpu(self.me)
            # processes that ended in the round are missed (their time shows as "outside",
            # erring towards flagging); processes started in it count from zero
            ours = sum(v - ours0.get(pid, 0.0) for pid, v in ours1.items())
            r.seconds = wall
            if wall > 0:
                r.ours_cores = ours / wall
                r.outside_cores = max(0.0, (busy - ours) / wall)
            r.disturbed = r.outside_cores > self.threshold
            self.rounds.append(r)

    def summary(self) -> dict[str, Any]:
        outside = [r.outside_cores for r in self.rounds]
        return {"threshold_cores": self.threshold, "rounds": len(self.rounds),
                "disturbed": sum(r.disturbed for r in self.rounds),
                "outside_cores_median": statistics.median(outside) if outside else None,
                "outside_cores_max": max(outside, default=None)}


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the half-range relative to the median (how far apart the rounds
    were)."""
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "rel": None}
    med = statistics.median(vals)
    lo, hi = min(vals), max(vals)
    return {"median": med, "min": lo, "max": hi, "n": len(vals),
            "rel": (hi - lo) / 2 / abs(med) if med else None}
