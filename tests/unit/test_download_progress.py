"""llmctl.cli.download_progress: `llmctl pull`'s bar on a terminal and its lines in a pipe."""

from __future__ import annotations

import io

from llmctl.cli.download_progress import DownloadProgress

EVENTS = [
    {"event": "resolved", "repo": "org/M-GGUF", "quant": "Q4_K_M", "total_bytes": 4 << 20,
     "files": [{"file": "M-Q4_K_M.gguf", "size": 4 << 20}], "projector": None},
    {"event": "download", "file": "M-Q4_K_M.gguf", "index": 1, "count": 1, "size": 4 << 20},
    *({"event": "progress", "file": "M-Q4_K_M.gguf", "bytes": n << 18, "total": 4 << 20,
       "percent": 100 * n / 16, "rate": 1 << 20, "eta_s": (16 - n) / 4} for n in range(1, 17)),
    {"event": "verifying", "file": "M-Q4_K_M.gguf"},
    {"event": "verified", "file": "M-Q4_K_M.gguf", "sha256": "ab" * 32},
]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_in_a_pipe() -> None:
    out = io.StringIO()
    progress = DownloadProgress(out)
    for event in EVENTS:
        progress.update(event)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "org/M-GGUF Q4_K_M: M-Q4_K_M.gguf, 4.0 MiB"
    assert lines[1] == "[1/1] M-Q4_K_M.gguf (4.0 MiB)"
    steps = [ln.split()[0] for ln in lines if ln.startswith("  ")]
    assert steps == ["0%", "10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%",
                     "100%"]  # one line per 10 %, not per event
    assert lines[-2:] == ["verifying M-Q4_K_M.gguf (sha256)", "verified M-Q4_K_M.gguf (sha256)"]
    assert "\r" not in out.getvalue()


def test_one_redrawn_line_on_a_terminal() -> None:
    out = Terminal()
    progress = DownloadProgress(out)
    for event in EVENTS[:10]:
        progress.update(event)
    text = out.getvalue()
    bar = text.rsplit("\r\x1b[2K", 1)[1]
    assert bar.startswith("  [") and "50.0%" in bar
    assert "2.0 MiB/4.0 MiB" in bar and "1.0 MiB/s" in bar and "ETA 2.0s" in bar
    assert text.count("\n") == 2  # the two header lines; the bar redraws in place
    progress.update(EVENTS[-1])
    assert out.getvalue().endswith("verified M-Q4_K_M.gguf (sha256)\n")


def test_a_resumed_file_says_what_it_already_had() -> None:
    out = io.StringIO()
    progress = DownloadProgress(out)
    progress.update(EVENTS[1])
    progress.update({"event": "resume", "file": "M-Q4_K_M.gguf", "bytes": 3 << 20,
                     "total": 4 << 20, "partial": "/hf/blobs/ab.incomplete"})
    progress.update({"event": "progress", "file": "M-Q4_K_M.gguf", "bytes": 4 << 20,
                     "total": 4 << 20, "resumed_from": 3 << 20, "percent": 100.0,
                     "rate": 1 << 20, "eta_s": 0.0})
    progress.update({"event": "restart", "file": "M-Q4_K_M.gguf", "bytes": 3 << 20,
                     "reason": "the server does not resume"})
    assert out.getvalue().splitlines()[1:] == [
        "  resuming: 3.0 MiB of 4.0 MiB kept from an earlier run in /hf/blobs/ab.incomplete",
        "  100% 4.0 MiB/4.0 MiB 1.0 MiB/s ETA 0ms",
        "  starting over: the server does not resume"]
