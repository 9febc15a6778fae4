"""How much of each workload a run does (quick vs full), and what every section gets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stack import Daemon, Home, Nginx, Ports, Reaper


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


QUICK = Plan("quick", latency_n=400, latency_rounds=3, latency_max_s=8, tput_s=3,
             tput_rounds=1, stream_s=3, stream_rounds=1, paced_n=4, switch_n=4, default_n=3, kills=1,
             graceful=1, cold_n=3, cli_runs=10, profile_s=5)
FULL = Plan("full", latency_n=3000, latency_rounds=5, latency_max_s=30, tput_s=8,
            tput_rounds=3, stream_s=6, stream_rounds=3, paced_n=10, switch_n=16, default_n=12, kills=2,
            graceful=2, cold_n=8, cli_runs=30, profile_s=12)

SEQ_TOKENS = 4  # max_tokens of the latency and throughput requests
STREAM_TOKENS = 384  # the long generations
CLIENTS = 16
STREAMS = 4
PACED_TOKENS = 96


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
    daemon_module: str = "llmctl.daemon.main"
    targets: dict[str, int] = field(default_factory=dict)  # path name -> port
    argv: dict[str, list[str]] = field(default_factory=dict)  # model -> llama-server argv
    results: dict[str, Any] = field(default_factory=dict)
