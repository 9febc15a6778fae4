"""How much of each workload a run does (quick vs full), and what every section gets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.noise import Meter
from bench.stack import Daemon, Home, Nginx, Ports, Reaper

if TYPE_CHECKING:
    from bench.router import Router


@dataclass(frozen=True)
class Plan:
    name: str
    latency_n: int  # sequential requests per path and kind (split over the rounds)
    latency_rounds: int
    latency_max_s: float  # cap per path and kind
    tput_s: float  # seconds per path and round, 16 clients
    tput_rounds: int
    stream_s: float  # seconds per path and round, 4 concurrent long generations
    stream_rounds: int
    paced_n: int  # single generations per path on the paced model (per-chunk lag)
    switch_n: int
    default_n: int
    kills: int  # kill -9 of the proxy worker (at most 2: see control.restart)
    graceful: int  # POST /restart-proxy
    cold_n: int
    cli_runs: int
    profile_s: float
    real_n: int  # generations per path and concurrency of the real (starter) model
    workload_s: float  # seconds per path and round of each extra streaming workload
    workload_rounds: int


QUICK = Plan("quick", latency_n=500, latency_rounds=5, latency_max_s=10, tput_s=1.5,
             tput_rounds=5, stream_s=1.5, stream_rounds=5, paced_n=4, switch_n=4, default_n=3,
             kills=5, graceful=1, cold_n=5, cli_runs=10, profile_s=5, real_n=2,
             workload_s=1.0, workload_rounds=3)
FULL = Plan("full", latency_n=3000, latency_rounds=7, latency_max_s=35, tput_s=5,
            tput_rounds=7, stream_s=5, stream_rounds=7, paced_n=10, switch_n=16, default_n=12,
            kills=5, graceful=2, cold_n=8, cli_runs=30, profile_s=12, real_n=6,
            workload_s=2.5, workload_rounds=5)

SEQ_TOKENS = 4  # max_tokens of the latency and throughput requests
STREAM_TOKENS = 384  # the long generations
CLIENTS = 16
STREAMS = 4
PACED_TOKENS = 96
# the streaming lead must hold across workloads: (name, streams, tokens per stream, extra
# request fields). "big chunks": top-5 logprobs in every SSE event (~1 KB instead of ~0.3 KB)
STREAM_WORKLOADS = (
    ("1x384", 1, 384, {}),
    ("8x128", 8, 128, {}),
    ("4x64", 4, 64, {}),
    ("4x384 big chunks", 4, 384, {"logprobs": True, "top_logprobs": 5}),
)
ROUTER_MODEL = "tiny-a"  # the model the router's figures are measured with


@dataclass
class Ctx:
    plan: Plan
    work: Path
    ports: Ports
    reaper: Reaper
    ggufs: dict[str, Path]
    parallel: int
    home: Home
    daemon: Daemon
    backend_port: int
    nginx: Nginx | None
    say: Callable[[str], None]
    daemon_module: str = "llmctl.daemon.processes.main"
    targets: dict[str, int] = field(default_factory=dict)  # path name -> port
    router: Router | None = None
    meter: Meter = field(default_factory=Meter)
    argv: dict[str, list[str]] = field(default_factory=dict)  # model -> llama-server argv
    results: dict[str, Any] = field(default_factory=dict)

    def baseline(self, name: str) -> str:
        """What a path is measured against: its own stack's llama-server."""
        return "router_child" if name.startswith("router") else "direct"

    def request_model(self, name: str) -> str:
        """The request's "model": the router routes by it, the others ignore it."""
        return ROUTER_MODEL if name.startswith("router") else "local"
