"""The proxy-path workloads: sequential latency, 16-client throughput, concurrent streaming,
and the daemon's memory. Each runs every path (direct, llmctld, nginx) in interleaved rounds,
rotating the order, so drift on a shared machine hits all paths alike."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from bench import loadgen
from bench.loadgen import Conn, chat_body, pct, summary_ms
from bench.plan import CLIENTS, PACED_TOKENS, SEQ_TOKENS, STREAM_TOKENS, STREAMS, Ctx
from bench.stack import DEFAULT_MODEL, PACED_MODEL, PACED_PARAMS, daemon_pids

MB = 1024 * 1024


def rotated(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


# --- memory -----------------------------------------------------------------------------------


def memory_of(pids: dict[str, int]) -> dict[str, Any]:
    """PSS and RSS (MB) per process and in total (PSS adds up; RSS double-counts the pages the
    forked workers share with the supervisor)."""
    out: dict[str, Any] = {"processes": {}}
    for role, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            info = psutil.Process(pid).memory_full_info()
            out["processes"][role] = {"pid": pid, "pss_mb": info.pss / MB, "rss_mb": info.rss / MB}
    procs = out["processes"].values()
    out["pss_mb"] = sum(p["pss_mb"] for p in procs)
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
    key = f"{label}" if target == "llmctld" else f"nginx_{label}"
    mem = ctx.results.setdefault("memory", {})
    if key not in mem or sampler.peak["pss_mb"] > mem[key]["pss_mb"]:
        mem[key] = sampler.peak


# --- 1. sequential latency --------------------------------------------------------------------


def latency(ctx: Ctx) -> None:
    plan = ctx.plan
    names = list(ctx.targets)
    out: dict[str, Any] = {"max_tokens": SEQ_TOKENS}
    for kind, stream in (("nonstream", False), ("stream", True)):
        body = chat_body(SEQ_TOKENS, stream)
        conns = {n: Conn(p) for n, p in ctx.targets.items()}
        for name in names:  # warm-up: connection, prompt cache, pools
            loadgen.sequential(ctx.targets[name], body, 20, 10, conns[name])
        samples: dict[str, list[loadgen.Reply]] = {n: [] for n in names}
        errors: dict[str, list[str]] = {n: [] for n in names}
        per_round = max(1, plan.latency_n // plan.latency_rounds)
        for r in range(plan.latency_rounds):
            for name in rotated(names, r):
                samples[name] += loadgen.sequential(ctx.targets[name], body, per_round,
                                                    plan.latency_max_s / plan.latency_rounds,
                                                    conns[name], errors=errors[name])
        for c in conns.values():
            c.close()
        res: dict[str, Any] = {}
        for name, replies in samples.items():
            res[name] = {"total": summary_ms([r.total for r in replies]),
                         "ttfb": summary_ms([r.ttfb for r in replies]),
                         "errors": len(errors[name]), "first_errors": errors[name][:3],
                         "retries": conns[name].retries}
        out[kind] = res
        line = ", ".join(f"{n} p50 {res[n]['total']['p50']:.2f} ms" for n in names)
        ctx.say(f"latency {kind}: {line}")
    ctx.results["latency"] = out


# --- 2. throughput ----------------------------------------------------------------------------


def interleaved_load(ctx: Ctx, body: bytes, clients: int, warmup_s: float, rounds: int,
                     seconds: float, label: str,
                     ) -> tuple[dict[str, list[loadgen.LoadResult]], dict[str, float]]:
    """`clients` concurrent keep-alive clients against every target, warmed up once, then for
    `rounds` rounds in rotated order (so no path always runs first). Returns the runs and the
    proxy CPU seconds per target."""
    names = list(ctx.targets)
    runs: dict[str, list[loadgen.LoadResult]] = {n: [] for n in names}
    for name in names:
        loadgen.concurrent(ctx.targets[name], body, clients, warmup_s)
    cpu: dict[str, float] = {n: 0.0 for n in names}
    for r in range(rounds):
        for name in rotated(names, r):
            with observe(ctx, name, label) as stats:
                runs[name].append(loadgen.concurrent(ctx.targets[name], body, clients, seconds))
            cpu[name] += stats.get("cpu_s", 0.0)
    return runs, cpu


def throughput(ctx: Ctx) -> None:
    names = list(ctx.targets)
    runs, cpu = interleaved_load(ctx, chat_body(SEQ_TOKENS, False), CLIENTS, 0.5,
                                 ctx.plan.tput_rounds, ctx.plan.tput_s, "load_throughput")
    out: dict[str, Any] = {"clients": CLIENTS, "max_tokens": SEQ_TOKENS,
                           "parallel": ctx.parallel}
    for name, rs in runs.items():
        ok = sum(len(x.replies) for x in rs)
        elapsed = sum(x.elapsed for x in rs)
        out[name] = {"rps": ok / elapsed if elapsed else 0.0, "requests": ok,
                     "errors": sum(x.errors for x in rs),
                     "client_cpu": sum(x.client_cpu for x in rs) / len(rs),
                     "proxy_cpu_ms_per_request": cpu[name] * 1000 / ok if ok else None,
                     "proxy_cores": cpu[name] / elapsed if elapsed else None,
                     "rounds_rps": [x.rate for x in rs],
                     "latency": summary_ms([rep.total for x in rs for rep in x.replies])}
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
    runs, cpu = interleaved_load(ctx, chat_body(STREAM_TOKENS, True), STREAMS, 0.3,
                                 ctx.plan.stream_rounds, ctx.plan.stream_s, "load_stream")
    out: dict[str, Any] = {"streams": STREAMS, "max_tokens": STREAM_TOKENS}
    for name, rs in runs.items():
        replies = [rep for x in rs for rep in x.replies]
        elapsed = sum(x.elapsed for x in rs)
        events = sum(x.events for x in rs)
        out[name] = {"chunks_per_s": events / elapsed if elapsed else 0.0,
                     "generations": len(replies), "chunks": events,
                     "errors": sum(x.errors for x in rs),
                     "client_cpu": sum(x.client_cpu for x in rs) / len(rs),
                     "proxy_cpu_us_per_chunk": cpu[name] * 1e6 / events if events else None,
                     "proxy_cores": cpu[name] / elapsed if elapsed else None,
                     "ttfb": summary_ms([rep.ttfb for rep in replies])}
    ctx.results["stream"] = out
    ctx.say("streaming (flood): " + ", ".join(
        f"{n} {out[n]['chunks_per_s']:.0f} chunks/s" for n in names))
    if PACED_MODEL in ctx.ggufs:
        out["paced"] = paced(ctx)


def paced(ctx: Ctx) -> dict[str, Any]:
    names = list(ctx.targets)
    r = ctx.daemon.switch(PACED_MODEL)
    if r.status_code != 200:
        raise RuntimeError(f"switch {PACED_MODEL}: {r.status_code} {r.text}")
    try:
        body = chat_body(PACED_TOKENS, True, timings=True)
        single: dict[str, list[loadgen.Reply]] = {n: [] for n in names}
        errors: dict[str, list[str]] = {n: [] for n in names}
        conns = {n: Conn(p) for n, p in ctx.targets.items()}
        for name in names:  # warm-up
            loadgen.sequential(ctx.targets[name], body, 1, 60, conns[name])
        # back to back on one connection, as an agent's turns are (an idle connection gets
        # its first segments ACKed at once; a busy one has delayed ACKs)
        rounds = 2
        for r in range(rounds):
            for name in rotated(names, r):
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
