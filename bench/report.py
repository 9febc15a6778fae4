"""The printed tables, the PASS/MISS list against the targets, the JSON and the plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

NA = "n/a"
PATHS = ("direct", "llmctld", "nginx", "router_child", "router")
# the paths compared, each with its own stack's llama-server
VERSUS = (("llmctld", "direct"), ("nginx", "direct"), ("router", "router_child"))


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    if v is None:
        return NA
    if isinstance(v, float) and v != v:  # NaN
        return NA
    return fmt.format(v) if isinstance(v, int | float) else str(v)


def table(headers: list[str], rows: list[list[str]], title: str = "") -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                         for i, (h, w) in enumerate(zip(headers, widths, strict=False))))
    out.append(line)
    for r in rows:
        out.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=False))))
    return "\n".join(out)


# --- the per-path comparison ------------------------------------------------------------------


def _versus(v: Any, base: Any, mode: str, vs: dict[str, Any] | None) -> str:
    """A path against its baseline: the median over rounds with the range of the rounds when
    per-round figures exist, else the difference or ratio of the pooled values."""
    if mode == "none":
        return ""
    if vs and vs.get("median") is not None:
        med, lo, hi = vs["median"], vs["min"], vs["max"]
        if mode == "delta":
            return f"{med:+.2f} ms [{lo:+.2f}..{hi:+.2f}]"
        return f"{med:.3f}x [{lo:.2f}-{hi:.2f}]"
    if v is None or base is None:
        return NA
    if mode == "delta":
        return f"{v - base:+.2f} ms"
    return f"{v / base:.3f}x" if base else NA


def _path_row(label: str, values: dict[str, Any], mode: str, fmt: str = "{:.2f}",
              vs: dict[str, Any] | None = None) -> list[str]:
    """One metric for every path, and each proxy's difference (`delta`) or ratio (`ratio`)
    to its own llama-server (`vs`: per-round medians and spreads, by path)."""
    row = [label] + [_f(values.get(p), fmt) for p in PATHS]
    for p, base in VERSUS:
        row.append(_versus(values.get(p), values.get(base), mode, (vs or {}).get(p)))
    return row


def comparison(r: dict[str, Any]) -> str:
    rows: list[list[str]] = []

    def per_path(fn: Callable[[str], Any]) -> dict[str, Any]:
        return {p: fn(p) for p in PATHS}

    lat = r.get("latency") or {}
    for kind, label in (("nonstream", "non-stream"), ("stream", "stream")):
        for stat, name in (("total", "total"), ("ttfb", "TTFB")):
            for q in ("p50", "p99"):
                if kind == "nonstream" and stat == "ttfb" and q == "p99":
                    continue
                values = {p: _get(lat, kind, p, stat, q) for p in PATHS}
                vs = _get(lat, kind, "vs") if (stat, q) == ("total", "p50") else None
                rows.append(_path_row(f"1 client {label} {name} {q} (ms)", values, "delta",
                                      vs=vs))
    if lat:
        rows.append(["1 client errors (non-stream/stream)", *[
            NA if _get(lat, "nonstream", p) is None else
            f"{_get(lat, 'nonstream', p, 'errors')}/{_get(lat, 'stream', p, 'errors')}"
            for p in PATHS], "", "", ""])
    tp = r.get("throughput") or {}
    if tp:
        rows.append(_path_row(f"{tp.get('clients')} clients requests/s",
                              per_path(lambda p: _get(tp, p, "rps")), "ratio", "{:.0f}",
                              vs=tp.get("vs")))
        rows.append(_path_row(f"{tp.get('clients')} clients latency p50 (ms)",
                              per_path(lambda p: _get(tp, p, "latency", "p50")), "delta"))
        rows.append(_path_row(f"{tp.get('clients')} clients proxy CPU ms/request",
                              per_path(lambda p: _get(tp, p, "proxy_cpu_ms_per_request")),
                              "none", "{:.3f}"))
        rows.append(_path_row(f"{tp.get('clients')} clients proxy CPU (cores)",
                              per_path(lambda p: _get(tp, p, "proxy_cores")), "none"))
        rows.append(_path_row(f"{tp.get('clients')} clients client CPU (cores)",
                              per_path(lambda p: _get(tp, p, "client_cpu")), "none"))
        rows.append([f"{tp.get('clients')} clients errors",
                     *[_f(_get(tp, p, "errors"), "{:d}") for p in PATHS], "", "", ""])
    st = r.get("stream") or {}
    if st:
        n = f"{st.get('streams')}x{st.get('max_tokens')} tok"
        rows.append(_path_row(f"stream {n}: SSE chunks/s",
                              per_path(lambda p: _get(st, p, "chunks_per_s")), "ratio", "{:.0f}",
                              vs=st.get("vs")))
        rows.append(_path_row(f"stream {n}: TTFB p50 (ms)",
                              per_path(lambda p: _get(st, p, "ttfb", "p50")), "delta"))
        rows.append(_path_row(f"stream {n}: proxy CPU us/chunk",
                              per_path(lambda p: _get(st, p, "proxy_cpu_us_per_chunk")), "none",
                              "{:.1f}"))
        rows.append(_path_row(f"stream {n}: proxy CPU (cores)",
                              per_path(lambda p: _get(st, p, "proxy_cores")), "none"))
        rows.append(_path_row(f"stream {n}: client CPU (cores)",
                              per_path(lambda p: _get(st, p, "client_cpu")), "none"))
        pc = st.get("paced") or {}
        if pc:
            one = f"paced 1 stream x{pc.get('max_tokens')} tok"
            rows.append(_path_row(f"{one}: tokens/s", per_path(
                lambda p: _get(pc, p, "tokens_per_s")), "ratio", "{:.0f}"))
            rows.append(_path_row(f"{one}: TTFB p50 (ms)", per_path(
                lambda p: _get(pc, p, "ttfb", "p50")), "delta"))
            for q in ("p50", "p90", "p99", "max"):
                values = {p: _get(pc, p, "lag_ms", q) for p in PATHS}
                rows.append(_path_row(f"{one}: chunk lag {q} (ms)", values, "delta"))
            rows.append(_path_row(f"{one}: inter-chunk gap p50 (ms)", per_path(
                lambda p: _get(pc, p, "gap_ms", "p50")), "delta"))
    rows = [row for row in rows if any(c != NA for c in row[1:1 + len(PATHS)])]
    if not rows:
        return ""
    return table(["metric", *PATHS, "llmctld vs direct", "nginx vs direct",
                  "router vs its child"], rows,
                 "== proxy path (each against its own llama-server: direct is llmctld's, "
                 "router_child the router's; [range over rounds]) ==")


def control_tables(r: dict[str, Any]) -> str:
    parts = []
    sw = r.get("switch")
    if sw:
        rows = [
            ["llama-server spawn -> /health 200 (direct, 5 ms poll)",
             _f(_get(sw, "direct_ready", "p50"), "{:.1f}"), ""],
            ["llama-server SIGTERM -> exit (direct)", _f(_get(sw, "direct_stop", "p50"), "{:.1f}"),
             ""],
            ["POST /switch from nothing loaded", _f(_get(sw, "api_cold", "p50"), "{:.1f}"),
             _f(_get(sw, "overhead_ms", "api_cold"), "{:+.1f}")],
            ["POST /switch?stream=1 (NDJSON) from nothing loaded",
             _f(_get(sw, "api_stream_cold", "p50"), "{:.1f}"),
             _f(_get(sw, "overhead_ms", "api_stream_cold"), "{:+.1f}")],
            ["llmctl switch from nothing loaded", _f(_get(sw, "cli_cold", "p50"), "{:.1f}"),
             _f(_get(sw, "overhead_ms", "cli_cold"), "{:+.1f}")],
            ["POST /switch A -> B (stop + start)", _f(_get(sw, "api_hot", "p50"), "{:.1f}"),
             _f(_get(sw, "overhead_ms", "api_hot"), "{:+.1f}")],
            ["llmctl switch A -> B (stop + start)", _f(_get(sw, "cli_hot", "p50"), "{:.1f}"),
             _f(_get(sw, "overhead_ms", "cli_hot"), "{:+.1f}")],
            ["direct: spawn + first request", _f(_get(sw, "default_direct", "p50"), "{:.1f}"),
             ""],
            ["default model loaded by the first /v1 request",
             _f(_get(sw, "default_llmctld", "p50"), "{:.1f}"),
             _f(_get(sw, "overhead_ms", "default"), "{:+.1f}")],
        ]
        rt = sw.get("router") or {}
        if rt:
            rows += [
                ["router: its child's argv spawned bare -> /health 200",
                 _f(_get(rt, "bare_ready", "p50"), "{:.1f}"), ""],
                ["router: bare child SIGTERM -> exit", _f(_get(rt, "bare_stop", "p50"), "{:.1f}"),
                 ""],
                ["router A -> B by a request naming B (vs bare stop + spawn + request)",
                 _f(_get(rt, "request", "p50"), "{:.1f}"),
                 _f(_get(rt, "overhead_ms", "request"), "{:+.1f}")],
                ["router A -> B by /models/unload + /models/load (vs bare stop + spawn)",
                 _f(_get(rt, "api", "p50"), "{:.1f}"), _f(_get(rt, "overhead_ms", "api"), "{:+.1f}")],
            ]
        status_ms = _get(r, "cli", "llmctl_status", "median_ms")
        cli_over = _get(sw, "overhead_ms", "cli_cold")
        if status_ms is not None and cli_over is not None:
            rows.insert(5, ["  of which beyond `llmctl status` (CLI start + a request)", "",
                            f"{cli_over - status_ms:+.1f}"])
        parts.append(table(["switch (medians)", "ms", "overhead ms"], rows,
                           "== switch (overhead = llmctl minus llama-server's own time) =="))
    rs = r.get("restart")
    if rs:
        rows = [[e["kind"], _f(e["new_worker_ms"], "{:.0f}"), _f(e["gap_ms"], "{:.0f}"),
                 _f(e.get("gap_at_s"), "{:.2f}"),
                 _f(e["baseline_gap_ms"], "{:.0f}"), str(e["requests"]), str(e["refused"]),
                 str(e["failed"]), str(e["resets"]),
                 " ".join(f"{p['at_s']:.2f}s:{p['kind']}" for p in e["problems"][:4])]
                for e in rs["events"]]
        parts.append(table(["restart", "new pid ms", "gap ms", "gap at s", "normal gap", "requests",
                            "refused", "failed", "resets", "first problems (s after)"], rows,
                           "== proxy worker restart under a steady request loop =="))
    cl = r.get("cli")
    if cl:
        rows = [[k, _f(_get(cl, k, "median_ms"), "{:.1f}"), _f(_get(cl, k, "min_ms"), "{:.1f}"),
                 cl["commands"][k]] for k in cl["commands"]]
        rows.append(["llmctl status / import requests", f"{cl['ratio']:.2f}x", "", ""])
        parts.append(table(["command", "median ms", "min ms", "argv"], rows,
                           f"== CLI wall time ({cl['tool']}, {cl['runs']} runs) =="))
    mem = r.get("memory")
    if mem:
        rows = []
        for key, label in (("idle", "llmctld idle"), ("load_throughput", "llmctld 16 clients"),
                           ("load_stream", "llmctld 4 streams"),
                           ("after", "llmctld idle, after all loads"),
                           ("nginx_idle", "nginx idle"),
                           ("nginx_load_throughput", "nginx 16 clients"),
                           ("router_idle", "router idle (its child excluded)"),
                           ("router_load_throughput", "router 16 clients"),
                           ("router_load_stream", "router 4 streams")):
            m = mem.get(key)
            if not m:
                continue
            procs = " ".join(f"{k}={v['pss_mb']:.1f}/{_f(v.get('uss_mb'), '{:.1f}')}/"
                             f"{v['rss_mb']:.1f}" for k, v in m["processes"].items())
            rows.append([label, f"{m['pss_mb']:.1f}", _f(m.get("uss_mb"), "{:.1f}"),
                         f"{m['rss_mb']:.1f}", procs])
        parts.append(table(["memory", "PSS MB", "USS MB", "RSS MB",
                            "per process PSS/USS/RSS MB"], rows,
                           "== memory (supervisor + proxy + lifecycle; llama-server excluded) =="))
    real = r.get("real")
    if real and real.get("skipped"):
        parts.append(f"real model: {real['skipped']}")
    elif real:
        rows = []
        for key in sorted(k for k in real if k.startswith("streams_")):
            x = real[key]
            n = key.split("_")[1]
            rows.append([f"{n} stream(s): decode tokens/s per stream",
                         _f(_get(x, "direct", "tokens_per_s"), "{:.1f}"),
                         _f(_get(x, "llmctld", "tokens_per_s"), "{:.1f}"),
                         _versus(None, None, "ratio", x.get("ratio"))])
            rows.append([f"{n} stream(s): tokens/s, all streams",
                         _f(_get(x, "direct", "aggregate_tokens_per_s"), "{:.1f}"),
                         _f(_get(x, "llmctld", "aggregate_tokens_per_s"), "{:.1f}"), ""])
            rows.append([f"{n} stream(s): time to first token p50 (ms)",
                         _f(_get(x, "direct", "ttft", "p50"), "{:.1f}"),
                         _f(_get(x, "llmctld", "ttft", "p50"), "{:.1f}"),
                         _versus(None, None, "delta", x.get("added_ttft_ms"))])
        parts.append(table(["real model", "direct", "llmctld", "llmctld vs direct"], rows,
                           f"== real model: {real.get('model')} "
                           f"({real.get('gguf_mb', 0):.0f} MB), {real.get('tokens')} tokens =="))
    rpc = r.get("rpc")
    if rpc:
        rows = []
        for model in sorted(k for k, v in rpc.items() if isinstance(v, dict)):
            x = rpc[model]
            rows.append([f"{model}: decode tokens/s", _f(_get(x, "local", "tokens_per_s"),
                                                         "{:.1f}"),
                         _f(_get(x, "rpc", "tokens_per_s"), "{:.1f}"),
                         _versus(None, None, "ratio", x.get("ratio"))])
            rows.append([f"{model}: switch to it (s)", _f(_get(x, "local", "switch_s")),
                         _f(_get(x, "rpc", "switch_s")), ""])
        parts.append(table(["rpc workers", "local", "2 loopback workers", "workers vs local"],
                           rows, f"== a model over {rpc.get('workers')} RPC workers on "
                           f"{rpc.get('transport')}, {rpc.get('tokens')} tokens (no target: "
                           "loopback is not a network) =="))
    cs = r.get("cold_start")
    if cs:
        parts.append(table(["cold start", "p50 ms", "min ms", "max ms"], [[
            "llmctld spawn -> first /health 200", _f(cs["ms"]["p50"], "{:.0f}"),
            _f(min(cs["runs"]), "{:.0f}"), _f(cs["ms"]["max"], "{:.0f}")]], "== cold start =="))
    return "\n\n".join(parts)


# --- targets ----------------------------------------------------------------------------------


# how far each proxy figure may trail the floor the same run measures (nginx, a reference
# proxy in C, in front of the same llama-server): issue 27's re-based targets
FLOOR_MARGIN = {"latency": 0.5, "throughput": 0.08, "stream": 0.05}


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: the measured value, the bound, PASS/MISS (n/a when not measured).

    The proxy figures are re-based on what the same run measures: at or ahead of
    llama-server's router mode (`router`), and within a fixed margin of the floor (`floor`:
    nginx's figure; `minus_floor` is measured - floor). `target` is the tighter of the two
    bounds, so PASS means both hold."""
    out = []

    def add(name: str, value: Any, op: str, bound: float | None, unit: str, note: str = "",
            **extra: Any) -> None:
        if value is None or (isinstance(value, float) and value != value) or bound is None:
            verdict = NA
        else:
            verdict = "PASS" if (value <= bound if op == "<=" else value >= bound) else "MISS"
        out.append({"metric": name, "value": value, "op": op, "target": bound, "unit": unit,
                    "verdict": verdict, "note": note, **extra})

    def rebased(name: str, value: Any, op: str, router: Any, floor: Any, margin: float | None,
                unit: str, note: str = "") -> None:
        """`value` op the router's, and op (floor -/+ margin); the tighter bound is `target`."""
        bounds, words = [], []
        if router is not None:
            bounds.append(router)
            words.append("router")
        if floor is not None and margin is not None:
            bounds.append(floor + margin if op == "<=" else floor - margin)
            words.append(f"nginx {'+' if op == '<=' else '-'} {margin:g}")
        bound = (min(bounds) if op == "<=" else max(bounds)) if bounds else None
        add(name, value, op, bound, unit, note, router=router, floor=floor,
            minus_floor=None if value is None or floor is None else value - floor,
            bound_words=", ".join(words))

    def vs(section: str, path: str, *keys: str) -> float | None:
        return _get(r, section, *keys, "vs", path, "median")

    p50, p90 = (_get(r, "hops", "scheduled", k) for k in ("rtt_p50_us", "rtt_p90_us"))
    hops = f"one loopback round trip here: p50 {p50 / 1000:.2f} / p90 {p90 / 1000:.2f} ms" \
        if None not in (p50, p90) else ""
    rebased("added latency p50, non-streaming", vs("latency", "llmctld", "nonstream"), "<=",
            vs("latency", "router", "nonstream"), vs("latency", "nginx", "nonstream"),
            FLOOR_MARGIN["latency"], "ms", hops)
    rebased("16-client throughput ratio", vs("throughput", "llmctld"), ">=",
            vs("throughput", "router"), vs("throughput", "nginx"), FLOOR_MARGIN["throughput"],
            "x")
    st = r.get("stream") or {}
    rebased(f"SSE chunk-rate ratio, {st.get('streams', 4)}x{st.get('max_tokens', 384)}",
            vs("stream", "llmctld"), ">=", vs("stream", "router"), vs("stream", "nginx"),
            FLOOR_MARGIN["stream"], "x")
    cpu = {p: _get(st, p, "proxy_cpu_us_per_chunk") for p in ("llmctld", "router", "nginx")}
    rebased("proxy CPU per 1,000 chunks", cpu["llmctld"], "<=", cpu["router"], cpu["nginx"],
            None, "ms", "nginx's for reference")
    for w in st.get("workloads") or []:
        label = f"{w['name']} ({w.get('chunk_bytes') or 0:.0f} B/chunk)"
        rebased(f"SSE chunk-rate ratio, {label}", _get(w, "vs", "llmctld", "median"), ">=",
                _get(w, "vs", "router", "median"), _get(w, "vs", "nginx", "median"),
                FLOOR_MARGIN["stream"], "x")
        wcpu = {p: _get(w, p, "proxy_cpu_us_per_chunk") for p in ("llmctld", "router", "nginx")}
        rebased(f"proxy CPU per 1,000 chunks, {w['name']}", wcpu["llmctld"], "<=",
                wcpu["router"], wcpu["nginx"], None, "ms")
    lag = [_get(r, "stream", "paced", p, "lag_ms", "p99") for p in ("llmctld", "direct")]
    add("paced stream chunk lag p99, added", lag[0] - lag[1] if None not in lag else None,
        "<=", 0.2, "ms")
    add("switch overhead (API)", _get(r, "switch", "overhead_ms", "api_cold"), "<=", 50, "ms")
    add("switch overhead (llmctl switch)", _get(r, "switch", "overhead_ms", "cli_cold"), "<=", 50,
        "ms", "includes the CLI's own start-up")
    hot = _get(r, "switch", "overhead_ms", "api_hot")
    router_hot = [v for v in (_get(r, "switch", "router", "overhead_ms", k)
                              for k in ("request", "api")) if v is not None]
    router_best = min(router_hot) if router_hot else None
    add("switch A -> B over llama-server's own stop + spawn", hot, "<=",
        min(10.0, router_best) if router_best is not None else 10.0, "ms",
        "KV save/restore excluded (cache.persist off; bench.switchback measures them); router: "
        "the best of its two ways", router=router_best,
        bound_words="10 ms" + (", router" if router_best is not None else ""))
    add("default model on first request overhead", _get(r, "switch", "overhead_ms", "default"),
        "<=", 50, "ms")
    for streams in (1, 4):
        add(f"real model, {streams} stream(s): tokens/s ratio",
            _get(r, "real", f"streams_{streams}", "ratio", "median"), ">=", 0.99, "x")
        add(f"real model, {streams} stream(s): added TTFT",
            _get(r, "real", f"streams_{streams}", "added_ttft_ms", "median"), "<=", 1.0, "ms")
    floor = _get(r, "floor", "import_requests_ms")
    events = _get(r, "restart", "events") or []
    for kind in ("graceful", "kill"):
        ev = [e for e in events if e["kind"] == kind]
        label = "POST /restart-proxy" if kind == "graceful" else "kill -9 proxy"
        add(f"proxy restart ({label}) refused", sum(e["refused"] for e in ev) if ev else None,
            "<=", 0, "")
        note = (f"median of {len(ev)}, max {max(e['gap_ms'] for e in ev):.0f} ms; failed "
                f"{sum(e['failed'] for e in ev)}, keep-alive resets "
                f"{sum(e['resets'] for e in ev)}") if ev else ""
        gap = _get(r, "restart", f"{kind}_gap_ms", "p50")
        if kind == "graceful":
            add(f"proxy restart ({label}) gap", gap, "<=", 300, "ms", note)
            continue
        add(f"proxy restart ({label}) gap", gap, "<=", 250, "ms", note)
        add(f"proxy restart ({label}) gap / import requests",
            gap / floor if gap is not None and floor else None, "<=", 2.5, "x",
            f"import requests {floor:.0f} ms in this run" if floor else "")
    add("llmctl status vs import requests", _get(r, "cli", "ratio"), "<=", 1.3, "x")
    mem = r.get("memory") or {}
    add("daemon memory PSS, idle", _get(mem, "idle", "pss_mb"), "<=", 45, "MB")
    loaded = [m["pss_mb"] for k, m in mem.items() if k.startswith("load_") or k == "after"]
    add("daemon memory PSS, under load / after", max(loaded) if loaded else None, "<=", 45, "MB")
    cold = _get(r, "cold_start", "ms", "p50")
    add("cold start to /health 200", cold, "<=", 300, "ms",
        f"median of {len(_get(r, 'cold_start', 'runs') or [])}" if cold is not None else "")
    add("cold start / import requests", cold / floor if cold is not None and floor else None,
        "<=", 3.0, "x", f"import requests {floor:.0f} ms in this run" if floor else "")
    return out


def targets_table(ts: list[dict[str, Any]]) -> str:
    def num(v: Any, unit: str) -> str:
        return NA if v is None else f"{v:.3g}" + (f" {unit}" if unit else "")

    rows = []
    for t in ts:
        bound = NA if t["target"] is None else f"{t['op']} {t['target']:.3g} {t['unit']}".strip()
        if t.get("bound_words"):
            bound += f" ({t['bound_words']})"
        minus = t.get("minus_floor")
        rows.append([t["metric"], num(t["value"], t["unit"]),
                     num(t.get("router"), t["unit"]) if "router" in t else "",
                     num(t.get("floor"), t["unit"]) if "floor" in t else "",
                     "" if minus is None else f"{minus:+.3g}", bound, t["verdict"], t["note"]])
    return table(["target", "measured", "router", "floor (nginx)", "measured - floor",
                  "bound", "verdict", "note"], rows,
                 "== targets (proxy figures re-based on the same run: >= / <= the router's, "
                 "within a margin of nginx's) ==")


def profile_text(r: dict[str, Any]) -> str:
    p = r.get("profile")
    if not p:
        return ""
    parts = []
    if p.get("skipped"):
        parts.append(f"profile: {p['skipped']}")
    for label, run in (p.get("runs") or {}).items():
        if "error" in run:
            parts.append(f"profile ({label}): {run['error']}")
            continue
        head = (f"== proxy worker profile, {label} (py-spy {run['seconds']} s, "
                f"{run['load_rps']:.0f} req/s, {run['load_chunks_per_s']:.0f} chunks/s, "
                f"{run['samples']} samples, proxy busy ~{run['cpu_busy']:.0%}) ==")
        rows = [[f"{t['pct']:.1f}%", t["where"]] for t in run["self_by_line"][:12]]
        parts.append(table(["self", "where (file:line function)"], rows, head))
        rows = [[f"{t['pct']:.1f}%", t["where"]] for t in run["inclusive_by_function"][:16]]
        parts.append(table(["incl", "function (file)"], rows))
        rows = [[f"{t['pct']:.1f}%", t["where"]] for t in run["self_by_file"][:8]]
        parts.append(table(["self", "file"], rows))
    if p.get("cli_imports"):
        rows = [[f"{i['cumulative_us'] / 1000:.1f}", i["module"]] for i in p["cli_imports"]]
        parts.append(table(["ms", "top-level import"], rows,
                           "== `llmctl status` imports (python -X importtime) =="))
    return "\n\n".join(parts)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
