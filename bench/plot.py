"""docs/bench.png: latency, ratios to direct, switch time split, and the targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import PATHS, _get

COLORS = {"direct": "#7f7f7f", "llmctld": "#1f77b4", "nginx": "#2ca02c",
          "router_child": "#c7c7c7", "router": "#ff7f0e"}


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = doc["results"]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5))
    meta = doc["meta"]
    fig.suptitle(f"llmctl bench ({meta['mode']}, {meta['date']}, {meta['cpus']} CPUs, "
                 f"llama-server -np {meta['parallel']}): each proxy against its own llama-server "
                 "in the same run", fontsize=11)
    _latency(axes[0][0], r)
    _ratios(axes[0][1], r)
    _switch(axes[1][0], r)
    _targets(axes[1][1], doc.get("targets") or [])
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency(ax: Any, r: dict[str, Any]) -> None:
    from matplotlib.ticker import ScalarFormatter

    groups = [("non-stream\ntotal", ("latency", "nonstream", "{p}", "total")),
              ("stream\nTTFB", ("latency", "stream", "{p}", "ttfb")),
              ("stream\ntotal", ("latency", "stream", "{p}", "total")),
              ("paced stream\nTTFB", ("stream", "paced", "{p}", "ttfb")),
              ("paced stream\nchunk lag", ("stream", "paced", "{p}", "lag_ms"))]
    width = 0.8 / len(PATHS)
    for i, p in enumerate(PATHS):
        xs, p50, p99 = [], [], []
        for g, (_, keys) in enumerate(groups):
            path = [k.format(p=p) for k in keys]
            v = _get(r, *path, "p50")
            if v is not None:
                xs.append(g + (i - (len(PATHS) - 1) / 2) * width)
                p50.append(max(v, 0.01))
                p99.append(_get(r, *path, "p99") or v)
        if xs:
            ax.bar(xs, p50, width, color=COLORS[p], label=f"{p} p50")
            ax.scatter(xs, p99, marker="_", s=250, color="black", zorder=3,
                       label="p99" if i == 0 else None)
            for x, v in zip(xs, p50, strict=False):
                ax.text(x, v, f"{v:.1f}" if v >= 0.95 else f"{v:.2f}", ha="center",
                        va="bottom", fontsize=6)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylabel("ms (log)")
    ax.set_title("Latency: 1 keep-alive client, back to back (tiny: max_tokens 4; paced: 96)")
    ax.legend(fontsize=7)


def _ratios(ax: Any, r: dict[str, Any]) -> None:
    """Each proxy's share of its own llama-server's rate: the median over rounds, with the
    range of the rounds as an error bar."""
    # the floor each is held to: nginx's ratio in the same run, minus the margin
    groups = [("16-client\nrequests/s", "throughput",
               (_get(r, "throughput", "vs", "nginx", "median") or 0.0) - 0.08),
              ("4-stream\nSSE chunks/s", "stream",
               (_get(r, "stream", "vs", "nginx", "median") or 0.0) - 0.05)]
    proxies = ("llmctld", "nginx", "router")
    width = 0.8 / len(proxies)
    for i, p in enumerate(proxies):
        for g, (_, section, _t) in enumerate(groups):
            vs = _get(r, section, "vs", p)
            if not vs or vs.get("median") is None:
                continue
            x = g + (i - (len(proxies) - 1) / 2) * width
            med = vs["median"]
            ax.bar(x, med, width, color=COLORS[p], label=p if g == 0 else None,
                   yerr=[[med - vs["min"]], [vs["max"] - med]], capsize=3)
            ax.text(x, med, f"{med:.2f}", ha="center", va="bottom", fontsize=8)
    for g, (*_, target) in enumerate(groups):
        ax.hlines(target, g - 0.45, g + 0.45, colors="red", linestyles="dashed",
                  label="nginx - margin" if g == 0 else None)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set_ylabel("ratio to its own llama-server (1.0 = no cost)")
    ax.set_title("Concurrency: share kept (median of rounds; bars: range of rounds)")
    ax.legend(fontsize=8)


def _switch(ax: Any, r: dict[str, Any]) -> None:
    sw = r.get("switch")
    if not sw:
        ax.set_axis_off()
        return
    ready, stop = _get(sw, "direct_ready", "p50") or 0, _get(sw, "direct_stop", "p50") or 0
    rows = [("POST /switch (cold)", ready, _get(sw, "overhead_ms", "api_cold")),
            ("llmctl switch (cold)", ready, _get(sw, "overhead_ms", "cli_cold")),
            ("POST /switch A->B", ready + stop, _get(sw, "overhead_ms", "api_hot")),
            ("llmctl switch A->B", ready + stop, _get(sw, "overhead_ms", "cli_hot")),
            ("default model, 1st request", _get(sw, "default_direct", "p50") or 0,
             _get(sw, "overhead_ms", "default"))]
    labels = [x[0] for x in rows]
    base = [x[1] for x in rows]
    over = [max(0.0, x[2] or 0.0) for x in rows]
    ys = range(len(rows))
    ax.barh(ys, base, color=COLORS["direct"], label="llama-server itself (direct)")
    ax.barh(ys, over, left=base, color=COLORS["llmctld"], label="llmctl overhead")
    for y, b, o in zip(ys, base, over, strict=False):
        ax.text(b + o, y, f" +{o:.0f} ms", va="center", fontsize=8)
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms (median)")
    ax.set_title("Switch and load time")
    ax.legend(fontsize=8, loc="lower right")


def _targets(ax: Any, ts: list[dict[str, Any]]) -> None:
    rows = []
    for t in ts:
        v, bound = t["value"], t["target"]
        if v is None or bound is None or bound <= 0:  # (a bound taken from a peer can be zero or negative)
            continue
        norm = (v / bound) if t["op"] == "<=" else (bound / v if v else float("inf"))
        rows.append((t["metric"], max(norm, 1e-3), t["verdict"], v, t["unit"]))
    if not rows:
        ax.set_axis_off()
        return
    ys = range(len(rows))
    ax.barh(ys, [x[1] for x in rows],
            color=["#2ca02c" if x[2] == "PASS" else "#d62728" for x in rows])
    for y, x in zip(ys, rows, strict=False):
        ax.text(x[1], y, f" {x[3]:.3g} {x[4]}", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    norms = [x[1] for x in rows]
    ax.set_xlim(min(0.05, min(norms) / 2), max(5.0, max(norms) * 3))
    ax.set_yticks(list(ys), [x[0] for x in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("measured / target (log; <= 1 passes)")
    ax.set_title("Targets: measured / target (green PASS, red MISS)")
