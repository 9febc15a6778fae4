"""Download progress for `llmctl pull`: on a terminal one redrawn line per file (bar, bytes,
rate, ETA); in a pipe plain lines (each file, every 10 %, verification, the result). A file
continued from an earlier run says so, and how much it already had, before its bar."""

from __future__ import annotations

from typing import Any, TextIO

from llmctl.cli.progress import StatusLine
from llmctl.cli.render import duration, size

BAR = 24


class DownloadProgress(StatusLine):
    def __init__(self, out: TextIO):
        super().__init__(out)
        self.last_bucket: tuple[str, int] | None = None

    def update(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        if name == "resolved":
            files = event["files"]
            what = f"{len(files)} shards" if len(files) > 1 else files[0]["file"]
            projector = f" + projector {event['projector']}" if event.get("projector") else ""
            self._line(f"{event['repo']} {event['quant']}: {what}{projector}, "
                       f"{size(event.get('total_bytes'))}")
        elif name == "download":
            self._line(f"[{event['index']}/{event['count']}] {event['file']} "
                       f"({size(event.get('size'))})")
        elif name == "resume":
            self._line(f"  resuming: {size(event['bytes'])} of {size(event.get('total'))} "
                       f"kept from an earlier run in {event['partial']}")
        elif name == "restart":
            self._line(f"  starting over: {event['reason']}")
        elif name == "progress":
            self._progress(event)
        elif name == "verifying" and not self.tty:
            self._line(f"verifying {event['file']} (sha256)")
        elif name == "verified":
            how = ("size only: the hub lists no sha256 for it" if event.get("method") == "size"
                   else "sha256")
            self._line(f"verified {event['file']} ({how})")
        elif name == "unverified":
            self._line(f"not verified {event['file']}: {event['reason']}")

    def _progress(self, event: dict[str, Any]) -> None:
        percent = event.get("percent")
        rate = f"{size(event.get('rate'))}/s"
        eta = f"ETA {duration(event['eta_s'])}" if event.get("eta_s") is not None else ""
        amount = f"{size(event['bytes'])}/{size(event.get('total'))}"
        if self.tty:
            bar = ""
            if percent is not None:
                filled = int(BAR * percent / 100)
                bar = f"[{'█' * filled}{'·' * (BAR - filled)}] {percent:5.1f}% "
            self._draw(f"  {bar}{amount}  {rate}  {eta}")
            return
        bucket = int(percent // 10) * 10 if percent is not None else -1
        if (event["file"], bucket) != self.last_bucket:
            self.last_bucket = (event["file"], bucket)
            self._line(f"  {bucket if bucket >= 0 else '?'}% {amount} {rate} {eta}".rstrip())

    def close(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False
