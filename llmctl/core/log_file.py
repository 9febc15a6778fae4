"""A child's log file: each model's llama-server log (llmctld) and an rpc-server's log
(`llmctl worker`). Opened for a start (rotated when too big), kept under a size limit while
the child runs, and read back (the tail of this run) for errors, `llmctl logs` and GET /logs.

The child writes the file itself (no pipe through a supervisor that could die), so all this
works on the file, never on a stream.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LOG_TAIL_LINES = 30
LOG_KEEP = 1024 * 1024  # what a cut log keeps of its newest part


def open_for_start(path: Path, limit: int, headline: str) -> int:
    """Rotate a log over `limit`, append the start headline, and return the offset where
    this run's output begins (for read_log_tail)."""
    rotate_log(path, limit)
    offset = file_size(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"--- llmctl {stamp}: {headline}\n")
    return offset


def read_log_tail(path: Path, start: int = 0, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            begin = max(start if start <= size else 0, size - 64 * 1024)
            f.seek(begin)
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    return [ln for ln in text if ln.strip()][-lines:]


def rotate_log(path: Path, limit: int) -> None:
    if file_size(path) > limit:
        try:
            os.replace(path, path.with_suffix(".log.1"))
        except OSError:
            pass


def bound_log(path: Path, limit: int) -> None:
    """Keep a running backend's log under the limit. llama-server writes with O_APPEND, so
    after we cut the file its next line lands at the new end."""
    if file_size(path) <= limit:
        return
    keep = min(limit // 2, LOG_KEEP)  # held in memory for a moment: keep it small
    try:
        with open(path, "r+b") as f:
            f.seek(-keep, os.SEEK_END)
            tail = f.read()
            f.seek(0)
            f.truncate()
            f.write(b"--- llmctl: log truncated to its last part ---\n" + tail)
    except OSError:
        pass


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
