"""What metrics and the activity log cost the proxy: llmctld with them on against llmctld
with them off (`observability.metrics/activity: false`), in one run, interleaved.

    .venv/bin/python bench/observability.py [--rounds 8] [--seconds 4] [--latency-n 400]

Two daemons with identical homes (tiny-a on their own llama-server each, -np 4) take turns in
rotated order, round after round: a 16-client keep-alive throughput run (non-streaming, 4
tokens) and a 1-client sequential latency run. It prints requests/s and p50 latency for each,
and checks the targets: throughput with observability on within 2 % of off, and its added p50
latency within 0.05 ms. It also prints the proxy worker's CPU time per request (psutil), the
figure that moves least when other programs compete for the cores: wall-clock throughput on a
busy 2-core machine swings far more than 2 % from run to run. First it times the observer
alone, in this process (`--in-process-only` stops there): the WSGI wrapping, the tail kept,
the token figures read and recorded, per request, against the same app unwrapped; that figure
does not depend on llama-server or the network. Every process it starts is stopped on the
way out.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import `bench` from the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import psutil  # noqa: E402

from bench import loadgen  # noqa: E402
from bench.stack import (  # noqa: E402
    BenchDaemon,
    Ports,
    make_home,
    proxy_pid,
    stop_daemon,
    write_models,
)

CLIENTS = 16
TOKENS = 4
MAX_THROUGHPUT_LOSS = 0.02
MAX_ADDED_P50_MS = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    p.add_argument("--seconds", type=float, default=4.0,
                   help="seconds of each throughput run (default 4)")
    p.add_argument("--latency-n", type=int, default=400,
                   help="sequential requests per side and round (default 400)")
    p.add_argument("--parallel", type=int, default=4, help="llama-server slots (default 4)")
    p.add_argument("--in-process-only", action="store_true",
                   help="only time the observer in this process (a few seconds)")
    return p.parse_args(argv)


# A final chat answer as llama-server writes it (build b11434), for the in-process timing
ANSWER = (b'{"choices":[{"finish_reason":"length","index":0,"message":{"role":"assistant",'
          b'"content":"abcd"}}],"created":1,"model":"tiny-a","system_fingerprint":"b11434",'
          b'"object":"chat.completion","usage":{"completion_tokens":4,"prompt_tokens":56,'
          b'"total_tokens":60,"prompt_tokens_details":{"cached_tokens":55}},"id":"chatcmpl-x",'
          b'"timings":{"cache_n":55,"prompt_n":1,"prompt_ms":0.5,"predicted_n":4,'
          b'"predicted_ms":2.0,"predicted_per_second":2000.0}}')


def in_process_cost(n: int = 20000) -> dict[str, float]:
    """Microseconds per request of a trivial WSGI app, bare and inside the Observer with
    metrics and activity on (best of five runs: the least disturbed by other programs)."""
    import os
    import time
    import types

    from llmctl.core.state import Backend
    from llmctl.daemon.observe.metrics import open_store

    open_store(Path(tempfile.mkdtemp(prefix="llmctl-bench-metrics-")))
    from llmctl.daemon.observe.activity import ActivityLog
    from llmctl.daemon.observe.gpu import GpuProbe
    from llmctl.daemon.observe.metrics import Metrics
    from llmctl.daemon.observe.observer import Observer

    class Hub:  # what the Observer reads of daemon/api/hub.py's Hub
        backend = types.SimpleNamespace(backend=Backend(state="ready", model="tiny-a"))
        listeners: list[Any] = []

    class Body:  # like the proxy's Relay: an iterable with close()
        def __iter__(self) -> Any:
            yield ANSWER

        def close(self) -> None:
            pass

    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", headers)
        return Body()

    hub = Hub()
    metrics = Metrics(hub, GpuProbe())
    observed = Observer(app, hub, metrics, ActivityLog(500))
    environ = {"PATH_INFO": "/v1/chat/completions", "REQUEST_METHOD": "POST",
               "REMOTE_ADDR": "127.0.0.1"}

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    out = {}
    for label, wsgi in (("bare", app), ("observed", observed)):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                body = wsgi(environ, start_response)
                for _chunk in body:
                    pass
                body.close()
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
        out[label] = best
    metrics.flush()
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cost = in_process_cost()
    print(f"in process: {cost['bare']:.2f} us/request bare, {cost['observed']:.2f} observed: "
          f"the observer adds {cost['observed'] - cost['bare']:.2f} us", flush=True)
    if args.in_process_only:
        return 0
    # a SIGTERM unwinds like Ctrl-C, so the daemons below are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ports = Ports()
    daemons: dict[str, BenchDaemon] = {}
    with tempfile.TemporaryDirectory(prefix="llmctl-bench-observability-") as work:
        root = Path(work)
        ggufs = {"tiny-a": write_models(root / "models", paced=False)["tiny-a"]}
        try:
            for side, on in (("on", True), ("off", False)):
                home = make_home(root / side, ggufs, ports.take(), args.parallel)
                home.write_config(observability={"metrics": on, "activity": on})
                daemon = BenchDaemon(home, root / f"{side}.log", ports.take())
                daemons[side] = daemon.start()
                assert daemon.switch("tiny-a").status_code == 200, daemon.log.read_text()
            results = run(daemons, args)
        finally:
            for daemon in daemons.values():
                stop_daemon(daemon)
    return report(results)


def run(daemons: dict[str, BenchDaemon], args: argparse.Namespace) -> dict[str, Any]:
    body = loadgen.chat_body(TOKENS, False)
    names = list(daemons)
    conns = {n: loadgen.Conn(d.port) for n, d in daemons.items()}
    for name, daemon in daemons.items():  # warm-up: connections, pools, prompt cache
        loadgen.concurrent(daemon.port, body, CLIENTS, 1.0)
        loadgen.sequential(daemon.port, body, 50, 10, conns[name])
    rps: dict[str, list[float]] = {n: [] for n in names}
    p50: dict[str, list[float]] = {n: [] for n in names}
    cpu_us: dict[str, list[float]] = {n: [] for n in names}
    proxies = {n: psutil.Process(proxy_pid(d)) for n, d in daemons.items()}
    for r in range(args.rounds):
        order = names[r % 2:] + names[:r % 2]
        for name in order:
            before = sum(proxies[name].cpu_times()[:2])
            load = loadgen.concurrent(daemons[name].port, body, CLIENTS, args.seconds)
            used = sum(proxies[name].cpu_times()[:2]) - before
            rps[name].append(load.rate)
            cpu_us[name].append(used * 1e6 / max(len(load.replies), 1))
        for name in order:
            replies = loadgen.sequential(daemons[name].port, body, args.latency_n, 60,
                                         conns[name])
            p50[name].append(loadgen.median([x.total * 1000 for x in replies]))
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(
            f"{n}: {rps[n][-1]:.0f} req/s, p50 {p50[n][-1]:.3f} ms, proxy CPU "
            f"{cpu_us[n][-1]:.0f} us/req" for n in names), flush=True)
    for conn in conns.values():
        conn.close()
    return {"rps": rps, "p50": p50, "cpu_us": cpu_us}


def report(results: dict[str, Any]) -> int:
    rps = {n: statistics.median(v) for n, v in results["rps"].items()}
    p50 = {n: statistics.median(v) for n, v in results["p50"].items()}
    # each round's on/off pair ran back to back, so their ratio cancels the machine's drift
    ratios = [on / off for on, off in zip(results["rps"]["on"], results["rps"]["off"], strict=True)]
    deltas = [on - off for on, off in zip(results["p50"]["on"], results["p50"]["off"], strict=True)]
    ratio, delta = statistics.median(ratios), statistics.median(deltas)
    print()
    print(f"{'':28}{'on':>10}{'off':>10}")
    print(f"{'16 clients requests/s':28}{rps['on']:>10.1f}{rps['off']:>10.1f}")
    print(f"{'1 client p50 latency (ms)':28}{p50['on']:>10.3f}{p50['off']:>10.3f}")
    cpu = {n: statistics.median(v) for n, v in results["cpu_us"].items()}
    print(f"{'proxy CPU per request (us)':28}{cpu['on']:>10.1f}{cpu['off']:>10.1f}")
    print()
    ok_rps = ratio >= 1 - MAX_THROUGHPUT_LOSS
    ok_p50 = delta <= MAX_ADDED_P50_MS
    print(f"throughput on/off (median of per-round ratios): {ratio:.4f}  "
          f"target >= {1 - MAX_THROUGHPUT_LOSS:.2f}  {'PASS' if ok_rps else 'MISS'}")
    print(f"added p50 latency (median of per-round differences): {delta:+.4f} ms  "
          f"target <= {MAX_ADDED_P50_MS} ms  {'PASS' if ok_p50 else 'MISS'}")
    return 0 if ok_rps and ok_p50 else 1


if __name__ == "__main__":
    sys.exit(main())
