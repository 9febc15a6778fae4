"""A save or a restore run in a thread, so the lifecycle loop never waits on llama-server:
the loop starts it, looks at it each tick (`finished()`), and stops looking at its deadline.

The thread only talks HTTP (slots.py) and reports; it never renames or deletes a file (the
loop does, through the store, once it has the result), so a job abandoned at its deadline
changes nothing on disk after that — what llama-server was writing is a temporary file the
loop discards once the process is gone.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from llmctl.daemon.kvcache import slots
from llmctl.daemon.kvcache.store import temp_file


@dataclass
class Job:
    kind: str  # "save" | "restore"
    model: str
    fingerprint: str
    host: str
    port: int
    deadline: float  # monotonic
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    results: list[dict[str, Any]] = field(default_factory=list)  # one per slot that worked
    error: str | None = None
    skipped: str | None = None  # why nothing was saved, when that was a decision
    max_disk: int = 0  # MiB, cache.max_disk as the backend was launched with

    def finished(self, now: float) -> bool:
        return self.done.is_set() or now >= self.deadline

    def timed_out(self) -> bool:
        return not self.done.is_set()

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def start(self, work: Any, *args: Any) -> Job:
        def run() -> None:
            try:
                work(self, *args)
            except slots.SlotError as e:
                self.error = str(e)
            except Exception as e:  # a bug here must not leave the loop waiting forever
                self.error = f"{type(e).__name__}: {e}"
            finally:
                self.done.set()

        threading.Thread(target=run, name=f"kv-{self.kind}", daemon=True).start()
        return self


def run_save(job: Job, min_tokens: int, room: Any) -> None:
    """Save every slot holding at least `min_tokens`. `room(tokens)` says whether that many
    more tokens fit the disk budget (the loop's store made room before); a slot that does not
    fit is skipped."""
    held = slots.held_tokens(job.host, job.port, job.remaining())
    wanted = {slot: n for slot, n in held.items() if n >= min_tokens}
    if not wanted:
        job.skipped = (f"no slot holds {min_tokens} tokens (cache.min_tokens)" if held else
                       "llama-server lists no slots")
        return
    for slot, tokens in sorted(wanted.items()):
        if not room(tokens):
            job.skipped = f"{tokens} tokens would not fit cache.max_disk"
            continue
        saved, written = slots.save(job.host, job.port, slot,
                                    temp_file(job.fingerprint, slot), job.remaining())
        job.results.append({"slot": slot, "tokens": saved, "bytes": written})


def run_restore(job: Job, files: list[dict[str, Any]]) -> None:
    for entry in files:
        restored, read = slots.restore(job.host, job.port, int(entry["slot"]),
                                       str(entry["file"]), job.remaining())
        job.results.append({"slot": entry["slot"], "tokens": restored, "bytes": read})
