"""Load progress for `llmctl switch`: one redrawn line with a bar on a terminal, plain lines
(one per phase, and every 10%) when the output is a file or a pipe."""

from __future__ import annotations

import time
from typing import Any, TextIO

BAR = 24
# the daemon's phase names as people read them (restoring: the saved KV cache is read back)
PHASES = {"restoring": "restoring cache"}
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class StatusLine:
    """One line redrawn in place on a terminal (`_draw`), and plain lines printed above it
    (`_line`); shared by the load and the download progress."""

    def __init__(self, out: TextIO):
        self.out = out
        self.tty = out.isatty()
        self.drawn = False

    def _draw(self, text: str) -> None:
        self.out.write(f"\r\x1b[2K{text}")
        self.out.flush()
        self.drawn = True

    def _line(self, text: str) -> None:
        if self.drawn:
            self.out.write("\r\x1b[2K")
            self.drawn = False
        self.out.write(text + "\n")
        self.out.flush()


class Progress(StatusLine):
    def __init__(self, out: TextIO, quiet: bool = False):
        super().__init__(out)
        self.quiet = quiet
        self.started = time.monotonic()
        self.model = ""
        self.last_plain: tuple[str, int] | None = None
        self.frame = 0

    def update(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        name = event.get("event")
        self.model = event.get("model") or self.model
        if name == "resolved":
            query = event.get("query")
            if query and query != self.model:
                self._line(f"{query!r} → {self.model}")
        elif name == "stopping":
            reason = f" ({event['reason']})" if event.get("reason") else ""
            self._status(f"stopping {event.get('model')}{reason}")
        elif name == "starting":
            self._status(f"starting {self.model}")
        elif name == "fitted":  # `switch --fit`: a smaller launch than configured
            flags = " ".join(f"{k} {v}" for k, v in (event.get("flags") or {}).items())
            self._line(f"{self.model} does not fit with -c {event.get('configured')}; "
                       f"loading it with {flags} (--fit)")
        elif name == "progress":
            phase = event.get("phase") or "loading"
            self._progress(PHASES.get(phase, phase), event.get("percent"))

    def _progress(self, phase: str, percent: float | None) -> None:
        if self.tty:
            if percent is None:
                bar = ""
            else:
                filled = int(BAR * percent / 100)
                bar = f" [{'█' * filled}{'·' * (BAR - filled)}] {percent:5.1f}%"
            self._status(f"{phase} {self.model}{bar}")
            return
        bucket = -1 if percent is None else int(percent // 10) * 10
        if (phase, bucket) != self.last_plain:
            self.last_plain = (phase, bucket)
            suffix = "" if percent is None else f" {bucket}%"
            self._line(f"{phase} {self.model}{suffix}")

    def _status(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        if not self.tty:
            self._line(text)
            return
        self.frame = (self.frame + 1) % len(SPINNER)
        self._draw(f"{SPINNER[self.frame]} {text}  {elapsed:4.1f}s")

    def close(self) -> None:
        if self.drawn:
            self.out.write("\r\x1b[2K")
            self.out.flush()
            self.drawn = False
