"""`llmctl cache [--json]` and `llmctl cache clear [MODEL]`: the saved KV caches.

One line per save: model, tokens, size on disk, age, whether it matches what the model would
be launched with now (`stale` ones are dropped at its next load), fingerprint; then the disk
they use against their budget. `--json` prints the API's answer (GET /cache).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmctl.cli.render import duration, size


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("action", nargs="?", choices=("clear",),
                     help="clear: remove the saves (all, or MODEL's)")
    cmd.add_argument("model", nargs="?", help="with clear: only this model's saves")


def run(client: Any, args: argparse.Namespace) -> int:
    if args.action == "clear":
        params = {"model": args.model} if args.model else {}
        result = client.post("/cache/clear", **params)
        if args.json:
            print(json.dumps(result))
            return 0
        cleared = result.get("cleared") or []
        what = f" of {args.model}" if args.model else ""
        print(f"cleared {len(cleared)} saved KV cache(s){what}" + (
            f" ({size(sum(c['bytes'] for c in cleared))})" if cleared else ""))
        return 0
    if args.model:
        print("llmctl: a model is only taken by `llmctl cache clear MODEL`", file=sys.stderr)
        return 2
    data = client.get("/cache")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(render(data))
    return 0


def render(data: dict[str, Any]) -> str:
    caches = data.get("caches") or []
    budget = data.get("budget_bytes")
    footer = (f"{size(data.get('used_bytes'))} used of {size(budget)} allowed "
              f"(cache.max_disk, at most half the free space) in {data.get('dir')}")
    if not caches:
        return ("no saved KV caches yet: a model's cache is saved when llmctld stops it "
                "(switch, stop, idle unload, shutdown)\n" + footer)
    rows = [("MODEL", "TOKENS", "SIZE", "AGE", "MATCH", "FINGERPRINT")]
    for c in sorted(caches, key=lambda c: -float(c.get("used_at") or 0)):
        rows.append((c["model"], f"{c['tokens']:,}", size(c["bytes"]), duration(c["age_s"]),
                     "yes" if c["matches"] else "stale", c["fingerprint"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return "\n".join([*lines, footer,
                      "(stale: made with other settings or files; dropped at the next load)"])
