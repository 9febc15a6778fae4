"""`llmctl top`: a live view of the daemon — model and state, load progress, requests in
flight, the idle countdown (when the daemon reports one), requests per minute, tokens/s, and
the last requests.

On a terminal it redraws a full screen (the alternate screen, plain ANSI, `q` or Ctrl-C quits);
into a pipe or a file it prints one summary line per interval and a row for each new request,
so `llmctl top | tee` and scripts get the same facts. It polls GET /status and
GET /activity?since=<last seen>, so it costs the daemon two small requests per interval.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import sys
import time
from collections import deque
from typing import Any, TextIO

from llmctl.cli.activity import HEADER, format_row, row
from llmctl.cli.render import duration
from llmctl.core.durations import format_duration

WINDOW = 60.0  # seconds the rates are taken over
KEEP = 500  # requests remembered for the rates and the list
BAR = 30


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("-i", "--interval", type=float, default=1.0,
                     help="seconds between refreshes (default 1)")
    cmd.add_argument("--once", action="store_true",
                     help="print one summary and the last requests, then exit")


class View:
    """What top knows: the last status, and the requests seen so far (newest last)."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.entries: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.seq = 0
        self.error: str | None = None

    def refresh(self, client: Any) -> list[dict[str, Any]]:
        """Poll the daemon; returns the requests that are new since the last refresh."""
        from llmctl.client.api import ClientError

        try:
            self.status = client.status()
            fresh = client.activity(since=self.seq, limit=KEEP)["entries"]
        except ClientError as e:
            self.error = str(e)
            return []
        self.error = None
        if fresh and fresh[0]["seq"] <= self.seq:  # the proxy worker restarted: a new log
            self.entries.clear()
        if fresh:
            self.seq = fresh[-1]["seq"]
            self.entries.extend(fresh)
        return fresh

    def rates(self, now: float) -> dict[str, float | None]:
        recent = [e for e in self.entries if e["time"] >= now - WINDOW]
        speeds = [e["tokens_per_s"] for e in recent if e.get("tokens_per_s")]
        generated = sum(e.get("generated_tokens") or 0 for e in recent)
        return {"rpm": len(recent) * 60.0 / WINDOW,
                "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
                "generated_per_min": generated * 60.0 / WINDOW}


def summary(view: View, now: float) -> list[str]:
    """The head of the screen (and the pipe's summary, joined): model, state, numbers."""
    if view.error:
        return [f"llmctl top: {view.error}"]
    status = view.status
    backend = status.get("backend") or {}
    state, model = backend.get("state", "?"), backend.get("model") or "-"
    line = f"model  {model}  {state}"
    if state == "ready":
        line += (f"  up {duration(backend.get('uptime_s'))}  loaded in "
                 f"{duration(backend.get('load_seconds'))}")
    elif state == "failed" and backend.get("error"):
        line += f"  {backend['error']}"
    lines = [line]
    progress = backend.get("progress") or {}
    if state == "starting":
        percent = progress.get("percent")
        filled = int(BAR * (percent or 0) / 100)
        bar = "#" * filled + "." * (BAR - filled)
        lines.append(f"load   [{bar}] {progress.get('phase', 'loading')}"
                     + (f" {percent:.0f}%" if percent is not None else ""))
    idle = status.get("idle") or {}  # the daemon's idle unload: countdown, pin, unloaded
    if idle.get("unloads_at") is not None:
        lines.append(f"idle   unloads in {format_duration(idle['unloads_at'] - now)} "
                     "without requests")
    elif idle.get("text"):
        lines.append(f"idle   {idle['text']}")
    rates = view.rates(now)
    speed = rates["tokens_per_s"]
    lines.append(f"now    in flight {status.get('in_flight', 0)}   requests/min "
                 f"{rates['rpm']:.0f}   tokens/s {'-' if speed is None else f'{speed:.1f}'}"
                 f"   generated/min {rates['generated_per_min']:.0f}")
    return lines


def screen(view: View, url: str, now: float, width: int, height: int) -> list[str]:
    lines = [f"llmctl top — {url}   {time.strftime('%H:%M:%S', time.localtime(now))}"
             "   (q quits)", *summary(view, now), "", format_row(HEADER)]
    room = max(height - len(lines), 0)
    recent = list(view.entries)[-room:] if room else []
    lines += [format_row(row(e)) for e in reversed(recent)]  # newest first
    if not view.entries:
        lines.append("no requests yet")
    return [line[:width] for line in lines[:height]]


def run(client: Any, args: argparse.Namespace) -> int:
    interval = max(args.interval, 0.1)
    view = View()
    out = sys.stdout
    if args.once:
        view.refresh(client)
        for line in screen(view, client.url, time.time(), 10_000, 10_000):
            print(line)
        return 0 if view.error is None else 1
    if out.isatty() and sys.stdin.isatty():
        return _full_screen(client, view, out, interval)
    return _lines(client, view, out, interval)


def next_tick(tick: float, interval: float, now: float) -> float:
    """Frames are drawn at a fixed rate, each for its tick (not for when the poll returned):
    sleeping `interval` after each poll would drift, and a countdown drawn once a second would
    skip a second now and then. After a stall (a slow daemon), the ticks restart from now."""
    tick += interval
    return tick if tick > now else now


def _lines(client: Any, view: View, out: TextIO, interval: float) -> int:
    tick = time.time()
    while True:
        fresh = view.refresh(client)
        stamp = time.strftime("%H:%M:%S", time.localtime(tick))
        out.write(f"{stamp}  " + "  |  ".join(s.strip() for s in summary(view, tick)) + "\n")
        for entry in fresh:
            out.write("  " + format_row(row(entry)) + "\n")
        out.flush()
        tick = next_tick(tick, interval, time.time())
        time.sleep(max(0.0, tick - time.time()))


def _full_screen(client: Any, view: View, out: TextIO, interval: float) -> int:
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, hide the cursor
    try:
        tty.setcbreak(fd)
        tick = time.time()
        while True:
            view.refresh(client)
            size = shutil.get_terminal_size()
            frame = screen(view, client.url, tick, size.columns, size.lines)
            out.write("\x1b[H" + "".join(f"{line}\x1b[K\r\n" for line in frame[:-1])
                      + (frame[-1] + "\x1b[K" if frame else "") + "\x1b[J")
            out.flush()
            tick = next_tick(tick, interval, time.time())
            ready, _, _ = select.select([fd], [], [], max(0.0, tick - time.time()))
            if ready and os.read(fd, 32).lower().startswith(b"q"):
                return 0
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
