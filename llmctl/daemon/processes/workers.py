"""The supervisor's children: one record per worker, and the one seam through which the
supervisor forks, signals and reaps them (`ProcessOps`), so unit tests drive the supervisor
with a fake one and never fork.

Workers are plain os.fork() children and channels plain socketpairs, not multiprocess
Process/Pipe: the supervisor must be the only code that reaps its children (one waitpid(-1)
loop, which also reaps llama-servers re-parented to us as subreaper), and the proxy worker
must read its channel cooperatively, which a gevent socket does and a Connection does not.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmctl.core.restarts import (
    BOOT_FAILURES_MAX,
    MAX_QUICK_RESTARTS,
    FatalError,
    RestartRecord,
    backoff,
)
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.channel import Channel, ChannelClosed

Target = Callable[[socket.socket], int]  # (the worker's channel end) -> exit code

PR_SET_CHILD_SUBREAPER = 36
__all__ = ["BOOT_FAILURES_MAX", "MAX_QUICK_RESTARTS", "FatalError", "ProcessOps", "Worker",
           "backoff", "become_subreaper"]


@dataclass
class Worker(RestartRecord):
    """One worker of llmctld; its restart rules (core/restarts.py) are `llmctl worker`'s too."""

    role: str
    target: Target | None  # None for a retiring proxy (never respawned)
    pid: int | None = None
    channel: Channel | None = None

    def __post_init__(self) -> None:
        self.label = f"the {self.role} worker"

    def info(self) -> dict[str, Any]:
        return {"pid": self.pid, "restarts": self.restarts, "last_exit": self.last_exit}


def become_subreaper() -> None:
    """A llama-server orphaned by a dying lifecycle worker is re-parented to us (and reaped
    by our loop) instead of init; the successor adopts it by pid."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


class ProcessOps:
    """The OS seam: the real one forks, signals and reaps."""

    def start(self, worker: Worker, parent_end: socket.socket, child_end: socket.socket,
              in_child: Callable[[], None]) -> int:
        """Fork `worker`; the child runs `in_child` (the supervisor lets go of what is not
        the child's), then the worker's target, and exits with its code."""
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            in_child()
            assert worker.target is not None
            os._exit(_run_child(worker.target, child_end))
        child_end.close()
        return pid

    def kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> tuple[int, int] | None:
        """(pid, exit code as subprocess gives it) of one ended child, or None."""
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == 0:
            return None
        return pid, os.waitstatus_to_exitcode(status)


def _run_child(target: Target, child_end: socket.socket) -> int:
    """Run a worker; if its boot raises, tell the supervisor why before exiting."""
    report = os.dup(child_end.fileno())  # the target may detach or close its end
    code = 1
    try:
        code = target(child_end)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:
        traceback.print_exc()
        try:
            Channel(socket.socket(fileno=report)).post(p.Failed(f"{type(e).__name__}: {e}"))
        except (OSError, ChannelClosed):
            pass
    finally:
        sys.stderr.flush()
    return code
