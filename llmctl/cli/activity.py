"""`llmctl activity [-f]`: the daemon's recent requests as a table, or followed live.

One line per request: when, from where (loopback or lan), route, model, status, duration,
time to first byte, prompt/generated(/cached) tokens, llama-server's tokens/s, and the error
if there was one. `--json` prints the entries as the API gives them (NDJSON with -f).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

HEADER = ("TIME", "CLIENT", "ROUTE", "MODEL", "STATUS", "DUR", "TTFB", "TOKENS", "TOK/S")


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("-f", "--follow", action="store_true", help="keep printing new requests")
    cmd.add_argument("-n", "--lines", type=int, default=20,
                     help="requests to show first (default 20)")


def run(client: Any, args: argparse.Namespace) -> int:
    out = sys.stdout
    if not args.follow:
        entries = client.activity(limit=max(args.lines, 1))["entries"]
        if args.json:
            print(json.dumps(entries, indent=2))
            return 0
        if not entries:
            print("no requests yet (the log starts empty when the proxy worker starts)")
            return 0
        for line in table(entries):
            print(line)
        return 0
    if not args.json:
        print(format_row(HEADER), flush=True)
    for entry in client.follow_activity(limit=max(args.lines, 0)):
        out.write(json.dumps(entry) if args.json else format_row(row(entry)))
        out.write("\n")
        out.flush()
    return 0


def table(entries: list[dict[str, Any]]) -> list[str]:
    return [format_row(HEADER), *(format_row(row(e)) for e in entries)]


WIDTHS = (8, 8, 30, 20, 6, 7, 7, 15, 7)


def format_row(cells: tuple[str, ...]) -> str:
    parts = [cell[:width].ljust(width) for cell, width in zip(cells, WIDTHS, strict=False)]
    return " ".join(parts + list(cells[len(WIDTHS):])).rstrip()


def row(entry: dict[str, Any]) -> tuple[str, ...]:
    tokens = "-"
    if entry.get("prompt_tokens") is not None or entry.get("generated_tokens") is not None:
        tokens = f"{_n(entry.get('prompt_tokens'))}/{_n(entry.get('generated_tokens'))}"
        if entry.get("cached_tokens"):
            tokens += f" ({entry['cached_tokens']}c)"
    cells: tuple[str, ...] = (
        time.strftime("%H:%M:%S", time.localtime(entry["time"])),
        entry.get("client") or "-",
        f"{entry.get('method', '')} {entry.get('route', '')}".strip()
        + (" ~" if entry.get("stream") else ""),
        entry.get("model") or "-",
        str(entry.get("status") or "-"),
        _ms(entry.get("duration_ms")),
        _ms(entry.get("ttfb_ms")),
        tokens,
        f"{entry['tokens_per_s']:.1f}" if entry.get("tokens_per_s") is not None else "-",
    )
    if entry.get("error"):
        cells += (f"error: {entry['error']}",)
    return cells


def _n(value: Any) -> str:
    return "-" if value is None else str(value)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value < 10_000 else f"{value / 1000:.1f}s"
