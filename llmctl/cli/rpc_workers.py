"""`llmctl status`'s lines about the RPC workers (the `workers` of GET /status): one per
worker, its state since when, and what it offers or why it is not there."""

from __future__ import annotations

import time
from typing import Any

STATE_WORDS = {"up": "up", "busy": "BUSY", "down": "DOWN", "unchecked": "not checked yet"}


def worker_lines(workers: list[dict[str, Any]]) -> list[str]:
    if not workers:
        return []
    width = max(len(str(w.get("name"))) for w in workers)
    address_width = max(len(str(w.get("address"))) for w in workers)
    lines = []
    for i, w in enumerate(workers):
        state = str(w.get("state"))
        since = w.get("since")
        text = STATE_WORDS.get(state, state) + (
            f" since {time.strftime('%H:%M:%S', time.localtime(since))}" if since else "")
        if state in ("busy", "down") and w.get("error"):
            text += f": {w['error']}"
        else:
            notes = [f"serving {w['in_use']}"] if w.get("in_use") else []
            devices = w.get("devices") or []
            if devices:
                free = sum(int(d.get("free") or 0) for d in devices) // 2**20
                notes.append(f"{len(devices)} device{'s' if len(devices) > 1 else ''}, "
                             f"{free} MiB free")
            text += f" ({'; '.join(notes)})" if notes else ""
        label = "workers " if i == 0 else "        "
        lines.append(f"{label} {str(w.get('name')).ljust(width)}  "
                     f"{str(w.get('address')).ljust(address_width)}  {text}")
    return lines
