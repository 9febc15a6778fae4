"""The proxy-path workloads: sequential latency, 16-client throughput, concurrent streaming,
and the daemon's memory. Each runs every path (direct, llmctld, nginx, llama-server's router
and its child) in interleaved rounds, rotating the order, so drift on a shared machine hits all
paths alike; each path is compared with its own stack's llama-server round by round."""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from bench import loadgen
from bench.loadgen import Conn, chat_body, pct, summary_ms
from bench.noise import spread
from bench.plan import (
    CLIENTS,
    PACED_TOKENS,
    SEQ_TOKENS,
    STREAM_TOKENS,
    STREAM_WORKLOADS,
    STREAMS,
    Ctx,
)
from bench.stack import DEFAULT_MODEL, PACED_MODEL, PACED_PARAMS, daemon_pids

MB = 1024 * 1024


def rotated(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


# --- memory -----------------------------------------------------------------------------------


def memory_of(pids: dict[str, int]) -> dict[str, Any]:
    """PSS, USS and RSS (MB) per process and in total. PSS adds up (a page shared by n
    processes counts 1/n in each); USS is what only that process holds (what it would free by
    exiting); RSS double-counts the pages the forked workers share with the supervisor."""
    out: dict[str, Any] = {"processes": {}}
    for role, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            info = psutil.Process(pid).memory_full_info()
            out["processes"][role] = {"pid": pid, "pss_mb": info.pss / MB,
                                      "uss_mb": info.uss / MB, "rss_mb": info.rss / MB}
    procs = out["processes"].values()
    out["pss_mb"] = sum(p["pss_mb"] for p in procs)
    out["uss_mb"] = sum(p["uss_mb"] for p in procs)
    out["rss_mb"] = sum(p["rss_mb"] for p in procs)
    return out


class MemoryPeak:
    """Samples memory_of(pids()) every `every` s in a thread; keeps the sample with the largest
    total PSS."""

    def __init__(self, pids: Callable[[], dict[str, int]], every: float = 0.25):
        self.pids, self.every = pids, every
        self.peak: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            sample = memory_of(self.pids())
            if self.peak is None or sample["pss_mb"] > self.peak["pss_mb"]:
                self.peak = sample

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def memory_idle(ctx: Ctx) -> None:
    time.sleep(0.5)
    mem = ctx.results.setdefault("memory", {})
    mem["idle"] = memory_of(daemon_pids(ctx.daemon))
    if ctx.nginx is not None and ctx.nginx.proc is not None:
        mem["nginx_idle"] = memory_of(ctx.nginx.pids())
    if ctx.router is not None:
        mem["router_idle"] = memory_of(ctx.router.pids())
    ctx.say(f"memory idle: llmctld PSS {mem['idle']['pss_mb']:.1f} MB, "
            f"RSS {mem['idle']['rss_mb']:.1f} MB")


def memory_after(ctx: Ctx) -> None:
    time.sleep(1.0)
    mem = ctx.results.setdefault("memory", {})
    mem["after"] = memory_of(daemon_pids(ctx.daemon))
    ctx.say(f"memory after the loads: llmctld PSS {mem['after']['pss_mb']:.1f} MB, "
            f"RSS {mem['after']['rss_mb']:.1f} MB")


def _cpu_seconds(pids: dict[str, int]) -> float:
    total = 0.0
    for pid in pids.values():
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


@contextlib.contextmanager
def observe(ctx: Ctx, target: str, label: str) -> Iterator[dict[str, float]]:
    """While the block runs: the peak memory of the process(es) behind `target` (kept in
    results["memory"]) and their CPU seconds (put in the yielded dict as `cpu_s`)."""
    if target == "llmctld":
        pids: Callable[[], dict[str, int]] = lambda: daemon_pids(ctx.daemon)  # noqa: E731
    elif target == "nginx" and ctx.nginx is not None:
        pids = ctx.nginx.pids
    elif target == "router" and ctx.router is not None:
        pids = ctx.router.pids
    else:
        yield {}
        return
    before = pids()
    cpu0 = _cpu_seconds(before)
    stats: dict[str, float] = {}
    with MemoryPeak(pids) as sampler:
        yield stats
    stats["cpu_s"] = _cpu_seconds(before) - cpu0
    if sampler.peak is None:
        return
    key = f"{label}" if target == "llmctld" else f"{target}_{label}"
    mem = ctx.results.setdefault("memory", {})
    if key not in mem or sampler.peak["pss_mb"] > mem[key]["pss_mb"]:
        mem[key] = sampler.peak


# --- 1. sequential latency --------------------------------------------------------------------


def _vs_baseline(ctx: Ctx, per_round: dict[str, list[float]], mode: str,
                 ) -> dict[str, dict[str, Any]]:
    """Each path against its baseline (its own stack's llama-server) round by round: the
    difference (`delta`) or ratio (`ratio`) per round, and their median and spread."""
    out: dict[str, dict[str, Any]] = {}
    for name, values in per_round.items():
        base = per_round.get(ctx.baseline(name))
        if base is None or name == ctx.baseline(name):
            continue
        pairs = [(v, b) for v, b in zip(values, base, strict=False)
                 if v is not None and b is not None]
        if mode == "delta":
            series = [v - b for v, b in pairs]
        else:
            series = [v / b for v, b in pairs if b]
        out[name] = {**spread(series), "rounds": series, "mode": mode,
                     "against": ctx.baseline(name)}
    return out


def latency(ctx: Ctx) -> None:
    plan = ctx.plan
    names = list(ctx.targets)
    out: dict[str, Any] = {"max_tokens": SEQ_TOKENS}
    for kind, stream in (("nonstream", False), ("stream", True)):
        bodies = {n: chat_body(SEQ_TOKENS, stream, model=ctx.request_model(n)) for n in names}
        conns = {n: Conn(p) for n, p in ctx.targets.items()}
        for name in names:  # warm-up: connection, prompt cache, pools
            loadgen.sequential(ctx.targets[name], bodies[name], 20, 10, conns[name])
        samples: dict[str, list[loadgen.Reply]] = {n: [] for n in names}
        round_p50: dict[str, list[float | None]] = {n: [] for n in names}
        errors: dict[str, list[str]] = {n: [] for n in names}
        per_round = max(1, plan.latency_n // plan.latency_rounds)
        for r in range(plan.latency_rounds):
            for name in rotated(names, r):
                with ctx.meter.round(f"latency {kind} {name}"):
                    replies = loadgen.sequential(
                        ctx.targets[name], bodies[name], per_round,
                        plan.latency_max_s / plan.latency_rounds, conns[name],
                        errors=errors[name])
                samples[name] += replies
                round_p50[name].append(pct([x.total * 1000 for x in replies], 50))
        for c in conns.values():
            c.close()
        res: dict[str, Any] = {}
        for name, replies in samples.items():
            res[name] = {"total": summary_ms([r.total for r in replies]),
                         "ttfb": summary_ms([r.ttfb for r in replies]),
                         "errors": len(errors[name]), "first_errors": errors[name][:3],
                         "retries": conns[name].retries, "round_p50_ms": round_p50[name]}
        res["vs"] = _vs_baseline(ctx, round_p50, "delta")  # type: ignore[arg-type]
        out[kind] = res
        line = ", ".join(f"{n} p50 {res[n]['total']['p50']:.2f} ms" for n in names)
        ctx.say(f"latency {kind}: {line}")
    ctx.results["latency"] = out


# --- 2. throughput ----------------------------------------------------------------------------


def interleaved_load(ctx: Ctx, bodies: dict[str, bytes], clients: int, warmup_s: float,
                     rounds: int, seconds: float, label: str,
                     ) -> tuple[list[dict[str, loadgen.LoadResult]], list[dict[str, float]], int]:
    """`clients` concurrent keep-alive clients against every target, warmed up once, then
    `rounds` rounds, each running every target once in rotated order (so no path always runs
    first). A round in which processes outside the run used more than the noise threshold is
    run again (at most rounds // 2 times). Returns per kept round the results and the proxy
    CPU seconds per target, and how many rounds were repeated."""
    names = list(ctx.targets)
    for name in names:
        loadgen.concurrent(ctx.targets[name], bodies[name], clients, warmup_s)
    kept: list[dict[str, loadgen.LoadResult]] = []
    cpu: list[dict[str, float]] = []
    repeats_left, repeated, r = max(1, rounds // 2), 0, 0
    while len(kept) < rounds:
        results: dict[str, loadgen.LoadResult] = {}
        round_cpu: dict[str, float] = {}
        outside = 0.0
        for name in rotated(names, r):
            with ctx.meter.round(f"{label} {name}") as rd, observe(ctx, name, label) as stats:
                results[name] = loadgen.concurrent(ctx.targets[name], bodies[name], clients,
                                                   seconds)
            round_cpu[name] = stats.get("cpu_s", 0.0)
            outside = max(outside, rd.outside_cores)
        r += 1
        if outside > ctx.meter.threshold and repeats_left:
            repeats_left -= 1
            repeated += 1
            ctx.say(f"  {label}: round {r} disturbed (processes outside the run used "
                    f"{outside:.2f} cores); running it again")
            continue
        kept.append(results)
        cpu.append(round_cpu)
    return kept, cpu, repeated


def throughput(ctx: Ctx) -> None:
    names = list(ctx.targets)
    bodies = {n: chat_body(SEQ_TOKENS, False, model=ctx.request_model(n)) for n in names}
    rounds, cpu, repeated = interleaved_load(ctx, bodies, CLIENTS, 0.5, ctx.plan.tput_rounds,
                                             ctx.plan.tput_s, "load_throughput")
    out: dict[str, Any] = {"clients": CLIENTS, "max_tokens": SEQ_TOKENS,
                           "parallel": ctx.parallel, "rounds": len(rounds),
                           "repeated_rounds": repeated}
    for name in names:
        rs = [x[name] for x in rounds]
        ok = sum(len(x.replies) for x in rs)
        elapsed = sum(x.elapsed for x in rs)
        cpu_s = sum(c[name] for c in cpu)
        out[name] = {"rps": statistics.median(x.rate for x in rs), "requests": ok,
                     "errors": sum(x.errors for x in rs),
                     "client_cpu": sum(x.client_cpu for x in rs) / len(rs),
                     "proxy_cpu_ms_per_request": cpu_s * 1000 / ok if ok else None,
                     "proxy_cores": cpu_s / elapsed if elapsed else None,
                     "rounds_rps": [x.rate for x in rs],
                     "latency": summary_ms([rep.total for x in rs for rep in x.replies])}
    out["vs"] = _vs_baseline(ctx, {n: out[n]["rounds_rps"] for n in names}, "ratio")
    ctx.results["throughput"] = out
    ctx.say("throughput: " + ", ".join(f"{n} {out[n]['rps']:.0f} req/s" for n in names))


# --- 3. streaming -----------------------------------------------------------------------------


def chunk_timing(replies: list[loadgen.Reply]) -> dict[str, Any]:
    """Per-chunk delivery lag and inter-chunk gaps.

    llama-server stamps every chunk with its own generation clock (`timings.predicted_ms`,
    from timings_per_token). For one generation, arrival - predicted_ms is a constant plus
    whatever delayed that chunk on its way; lag = that minus its minimum over the generation.
    A path that buffers shows up as lag, whatever the absolute clock offset."""
    lags: list[float] = []
    gaps: list[float] = []
    for rep in replies:
        offsets = []
        for t, event in rep.marks:
            if not event.startswith(b"data: {"):
                continue
            try:
                ms = json.loads(event[6:])["timings"]["predicted_ms"]
            except (ValueError, KeyError, TypeError):
                continue
            offsets.append(t - ms / 1000)
        if len(offsets) >= 2:
            low = min(offsets)
            lags += [(o - low) * 1000 for o in offsets]
        times = [t for t, _ in rep.marks]
        gaps += [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
    return {"lag_ms": {"p50": pct(lags, 50), "p90": pct(lags, 90), "p99": pct(lags, 99),
                       "max": max(lags, default=None), "n": len(lags)},
            "gap_ms": {"p50": pct(gaps, 50), "p99": pct(gaps, 99), "max": max(gaps, default=None)}}


def streaming(ctx: Ctx) -> None:
    """SSE chunk rate with 4 concurrent long generations of the tiny model (a flood: ~10k
    chunks/s, what costs the proxy most); then, on the paced model, single generations one at a
    time for the per-chunk lag and gaps at a realistic token rate."""
    names = list(ctx.targets)
    bodies = {n: chat_body(STREAM_TOKENS, True, model=ctx.request_model(n)) for n in names}
    rounds, cpu, repeated = interleaved_load(ctx, bodies, STREAMS, 0.3, ctx.plan.stream_rounds,
                                             ctx.plan.stream_s, "load_stream")
    out: dict[str, Any] = {"streams": STREAMS, "max_tokens": STREAM_TOKENS,
                           "rounds": len(rounds), "repeated_rounds": repeated}
    for name in names:
        rs = [x[name] for x in rounds]
        replies = [rep for x in rs for rep in x.replies]
        elapsed = sum(x.elapsed for x in rs)
        events = sum(x.events for x in rs)
        cpu_s = sum(c[name] for c in cpu)
        out[name] = {"chunks_per_s": statistics.median(
                         x.events / x.elapsed if x.elapsed else 0.0 for x in rs),
                     "generations": len(replies), "chunks": events,
                     "errors": sum(x.errors for x in rs),
                     "client_cpu": sum(x.client_cpu for x in rs) / len(rs),
                     "proxy_cpu_us_per_chunk": cpu_s * 1e6 / events if events else None,
                     "rounds_proxy_cpu_us_per_chunk": [
                         c[name] * 1e6 / x[name].events if x[name].events else None
                         for c, x in zip(cpu, rounds, strict=False)],
                     "proxy_cores": cpu_s / elapsed if elapsed else None,
                     "rounds_chunks_per_s": [x.events / x.elapsed if x.elapsed else 0.0
                                             for x in rs],
                     "ttfb": summary_ms([rep.ttfb for rep in replies])}
    out["vs"] = _vs_baseline(ctx, {n: out[n]["rounds_chunks_per_s"] for n in names}, "ratio")
    ctx.results["stream"] = out
    ctx.say("streaming (flood): " + ", ".join(
        f"{n} {out[n]['chunks_per_s']:.0f} chunks/s" for n in names))
    out["workloads"] = stream_workloads(ctx)
    if PACED_MODEL in ctx.ggufs:
        out["paced"] = paced(ctx)


def _with(body: bytes, extra: dict[str, Any]) -> bytes:
    return json.dumps({**json.loads(body), **extra}).encode() if extra else body


def _chunk_bytes(ctx: Ctx, body: bytes) -> float | None:
    """Average bytes of one SSE event of this request, from one generation direct."""
    conn = Conn(ctx.targets["direct"])
    try:
        reply = conn.chat(body, keep_marks=True)
    finally:
        conn.close()
    sizes = [len(event) for _, event in reply.marks if event.startswith(b"data: {")]
    return statistics.fmean(sizes) if sizes else None


def stream_workloads(ctx: Ctx) -> list[dict[str, Any]]:
    """The chunk-rate ratio and proxy CPU per chunk of every path under other streaming
    workloads (STREAM_WORKLOADS: stream count, tokens per stream, chunk size), in the same
    interleaved, noise-checked rounds as the main one."""
    names = list(ctx.targets)
    out = []
    for label, streams, tokens, extra in STREAM_WORKLOADS:
        bodies = {n: _with(chat_body(tokens, True, model=ctx.request_model(n)), extra)
                  for n in names}
        rounds, cpu, repeated = interleaved_load(ctx, bodies, streams, 0.2,
                                                 ctx.plan.workload_rounds, ctx.plan.workload_s,
                                                 "load_stream")
        w: dict[str, Any] = {"name": label, "streams": streams, "max_tokens": tokens,
                             "extra": extra, "rounds": len(rounds), "repeated_rounds": repeated,
                             "chunk_bytes": _chunk_bytes(ctx, bodies["direct"])}
        for name in names:
            rs = [x[name] for x in rounds]
            events = sum(x.events for x in rs)
            cpu_s = sum(c[name] for c in cpu)
            w[name] = {"rounds_chunks_per_s": [x.events / x.elapsed if x.elapsed else 0.0
                                               for x in rs],
                       "errors": sum(x.errors for x in rs),
                       "proxy_cpu_us_per_chunk": cpu_s * 1e6 / events if events else None}
            w[name]["chunks_per_s"] = statistics.median(w[name]["rounds_chunks_per_s"])
        w["vs"] = _vs_baseline(ctx, {n: w[n]["rounds_chunks_per_s"] for n in names}, "ratio")
        out.append(w)
        ctx.say(f"streaming {label} ({w['chunk_bytes'] or 0:.0f} B/chunk): " + ", ".join(
            f"{n} {w['vs'][n]['median']:.3f}x" for n in w["vs"] if w["vs"][n]["median"]))
    return out


def paced(ctx: Ctx) -> dict[str, Any]:
    """Single paced streams through llmctld (and nginx) against direct; the router is not in
    it (its child would need this model's own --threads)."""
    names = [n for n in ctx.targets if ctx.baseline(n) == "direct"]
    r = ctx.daemon.switch(PACED_MODEL)
    if r.status_code != 200:
        raise RuntimeError(f"switch {PACED_MODEL}: {r.status_code} {r.text}")
    try:
        body = chat_body(PACED_TOKENS, True, timings=True)
        single: dict[str, list[loadgen.Reply]] = {n: [] for n in names}
        errors: dict[str, list[str]] = {n: [] for n in names}
        conns = {n: Conn(ctx.targets[n]) for n in names}
        for name in names:  # warm-up
            loadgen.sequential(ctx.targets[name], body, 1, 60, conns[name])
        # back to back on one connection, as an agent's turns are (an idle connection gets
        # its first segments ACKed at once; a busy one has delayed ACKs)
        rounds = 2
        for r in range(rounds):
            for name in rotated(names, r):
                with ctx.meter.round(f"paced {name}"):
                    single[name] += loadgen.sequential(
                        ctx.targets[name], body, max(1, ctx.plan.paced_n // rounds), 120,
                        conns[name], keep_marks=True, errors=errors[name])
        for c in conns.values():
            c.close()
    finally:
        r = ctx.daemon.switch(DEFAULT_MODEL)
        if r.status_code != 200:
            raise RuntimeError(f"switch {DEFAULT_MODEL}: {r.status_code} {r.text}")
    out: dict[str, Any] = {"max_tokens": PACED_TOKENS, "model": PACED_PARAMS,
                           "generations": ctx.plan.paced_n}
    for name, reps in single.items():
        events = sum(x.events for x in reps)
        out[name] = {"chunks_per_s": events / sum(x.total for x in reps),
                     "tokens_per_s": PACED_TOKENS * len(reps) / sum(x.total for x in reps),
                     "ttfb": summary_ms([x.ttfb for x in reps]), "errors": len(errors[name]),
                     **chunk_timing(reps)}
    rate = out["direct"]["tokens_per_s"]
    ctx.say(f"streaming (paced, ~{rate:.0f} tokens/s): " + ", ".join(
        f"{n} lag p99 {out[n]['lag_ms']['p99']:.1f} ms, TTFB p50 {out[n]['ttfb']['p50']:.1f} ms"
        for n in names))
    return out
