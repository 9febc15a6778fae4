"""A model spread over two llama.cpp RPC workers, against the same model run locally: decode
tokens/s of streamed generations through llmctld, the RPC model's as a ratio to the local one
in the same round.

Two `llmctl worker` processes on loopback stand in for two machines (one CPU thread each; the
local run gets one thread too, so both do the same arithmetic on the same number of cores).
Loopback is not a network: there is no bandwidth limit and a round trip costs microseconds,
so this shows what the RPC machinery itself costs per token (every token is a graph
computation on each worker in turn, each a few round trips), not what a LAN would. No target.

Model: `paced` (198 MB, the pace of a small real model; the 469 KB tiny ones finish a
generation in milliseconds locally, too fast to time as a stream). Also measured: the bytes
per generated token on the workers' connections (the kernel's socket counters), what a
network would carry. The backend is stopped before the workers.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from typing import Any

from bench.noise import spread
from bench.plan import Ctx
from bench.realmodel import TOKENS, _run
from bench.stack import DEFAULT_MODEL, PACED_MODEL, ROOT, wait_for
from llmctl.core.rpc_probe import probe

WORKERS = ("rpc-a", "rpc-b")
SOURCES = (PACED_MODEL,)  # each run as <model>-local and <model>-rpc


def rpc_workers(ctx: Ctx) -> None:
    ports = {name: ctx.ports.take() for name in WORKERS}
    procs = []
    out: dict[str, Any] = {"tokens": TOKENS, "workers": len(WORKERS),
                           "worker_threads": 1, "transport": "loopback TCP"}
    try:
        for name, port in ports.items():
            log = ctx.work / f"worker-{name}.log"
            with open(ctx.work / f"worker-{name}.err", "wb") as err:
                procs.append(ctx.reaper.popen(
                    f"worker {name}", [str(ROOT / "bin" / "llmctl"), "worker", "--port",
                                       str(port), "--name", name, "--threads", "1", "--log",
                                       str(log)], env=ctx.home.env, stdout=err, stderr=err))
            wait_for(lambda port=port: probe("127.0.0.1", port, 0.5).up, 30,
                     f"worker {name}")
        ctx.home.write_config(workers={n: f"127.0.0.1:{p}" for n, p in ports.items()})
        extra = ["--threads", "1"]  # the local run: one thread, like each worker
        for source in SOURCES:
            ctx.home.add_model(f"{source}-local", ctx.ggufs[source], llama={"extra_args": extra})
            ctx.home.add_model(f"{source}-rpc", ctx.ggufs[source],
                               llama={"workers": "all", "extra_args": extra})
        _check(ctx.daemon.post("/reload"), "reload")
        body = _body()
        for source in SOURCES:
            out[source] = _compare(ctx, f"{source}-local", f"{source}-rpc", body,
                                   list(ports.values()))
            res = out[source]
            ctx.say(f"rpc {source}: decode tokens/s local {res['local']['tokens_per_s']:.1f}, "
                    f"two loopback workers {res['rpc']['tokens_per_s']:.1f} "
                    f"(ratio {res['ratio']['median']:.3f}); "
                    f"{res['rpc']['bytes_per_token'] / 1024:.1f} KiB per token over RPC")
    finally:
        ctx.results["rpc"] = out
        # the backend before its workers: llama-server aborts when a worker vanishes
        _check(ctx.daemon.switch(DEFAULT_MODEL), f"switch {DEFAULT_MODEL}")
        for proc in procs:
            ctx.reaper.stop(proc)


def _body() -> bytes:
    from bench.loadgen import chat_body

    return chat_body(TOKENS, True)


def _compare(ctx: Ctx, local: str, remote: str, body: bytes, workers: list[int],
             ) -> dict[str, Any]:
    rounds = max(3, ctx.plan.real_n)
    per: dict[str, list[dict[str, Any]]] = {"local": [], "rpc": []}
    loads: dict[str, list[float]] = {"local": [], "rpc": []}
    traffic: list[float] = []  # bytes through the workers' sockets per generated token
    for i in range(rounds):
        order = [("local", local), ("rpc", remote)]
        for kind, model in order[i % 2:] + order[:i % 2]:
            started = time.perf_counter()
            _check(ctx.daemon.switch(model), f"switch {model}")
            loads[kind].append(time.perf_counter() - started)
            _run(ctx.daemon.port, body, 1, 1)  # warm-up: the first prompt fills the cache
            before = _socket_bytes(workers)
            with ctx.meter.round(f"rpc {model}"):
                per[kind].append(_run(ctx.daemon.port, body, 1, 2))
            if kind == "rpc":
                traffic.append((_socket_bytes(workers) - before) / (TOKENS * 2))
    res: dict[str, Any] = {}
    for kind, runs in per.items():
        rates = [v for x in runs for v in x["rates"]]
        res[kind] = {"tokens_per_s": statistics.median(rates) if rates else float("nan"),
                     "rounds_tokens_per_s": [statistics.median(x["rates"]) if x["rates"]
                                             else float("nan") for x in runs],
                     "switch_s": statistics.median(loads[kind]),
                     "errors": sum(len(x["errors"]) for x in runs)}
    res["rpc"]["bytes_per_token"] = statistics.median(traffic)
    res["ratio"] = spread([a / b for a, b in zip(res["rpc"]["rounds_tokens_per_s"],
                                                 res["local"]["rounds_tokens_per_s"],
                                                 strict=False)])
    return res


def _socket_bytes(ports: list[int]) -> int:
    """Bytes both ways on the established TCP connections to the workers' ports, from the
    kernel's own counters (`ss -ti`: bytes_sent, bytes_received of each socket); each byte
    would cross a network once. The prompt's share is in it too."""
    total = 0
    for port in ports:
        out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
        total += sum(int(n) for n in re.findall(r"\bbytes_(?:sent|received):(\d+)", out))
    return total


def _check(response: Any, what: str) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{what}: {response.status_code} {response.text}")
