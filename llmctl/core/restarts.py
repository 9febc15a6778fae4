"""The restart rules both of llmctl's supervisors follow: llmctld's supervisor for its proxy
and lifecycle workers (daemon/processes/workers.py) and `llmctl worker` for its rpc-server
(worker/supervisor.py). One record per supervised child says when it starts again, or that
the supervisor gives up:

- a death before the child is ready (other than a KILL or TERM from outside) is a boot
  failure; BOOT_FAILURES_MAX of them in a row end the supervisor with the child's last error
  (gunicorn's WORKER_BOOT_ERROR: a child that cannot start will not start by retrying);
- deaths after it was ready restart it at once the first time, then back off (0.1 s
  doubling to 5 s) while they come quickly; MAX_QUICK_RESTARTS quick deaths in a row end the
  supervisor too (supervisor's BACKOFF -> FATAL after startretries).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

RESTART_WINDOW = 30.0  # quick deaths within this many seconds of a start count toward backoff
MAX_QUICK_RESTARTS = 8  # then the supervisor gives up
BOOT_FAILURES_MAX = 3  # deaths before ready in a row, then the supervisor gives up
# killed from outside (a user, the chaos test, ourselves): not the child failing to boot
EXTERNAL_SIGNALS = (-signal.SIGKILL, -signal.SIGTERM)


class FatalError(Exception):
    """The supervisor gives up: a child keeps failing."""


@dataclass(kw_only=True)
class RestartRecord:
    """What a supervisor remembers of one child across its restarts. `label` names the child
    in the messages ("the proxy worker", "rpc-server")."""

    label: str = "the child"
    started: float = 0.0  # monotonic
    ready: bool = False
    restarts: int = 0
    quick_deaths: int = 0
    boot_failures: int = 0
    due: float = 0.0  # when to (re)start, monotonic
    last_exit: str | None = None
    last_error: str | None = None

    def mark_ready(self) -> None:
        """The child serves: from now on its death is a crash, not a boot failure."""
        self.ready = True
        self.boot_failures = 0

    def schedule_restart(self, code: int, now: float) -> None:
        """The child died with `code` (as subprocess gives it: negative for a signal): set
        when it starts again (`due`), or raise FatalError saying why not."""
        quick = now - self.started < RESTART_WINDOW
        self.quick_deaths = self.quick_deaths + 1 if quick else 0
        if not self.ready and code not in EXTERNAL_SIGNALS:
            self.boot_failures += 1
        else:
            self.boot_failures = 0
        if self.boot_failures >= BOOT_FAILURES_MAX:
            raise FatalError(
                f"{self.label} keeps failing before it is ready "
                f"({self.last_error or self.last_exit}; {self.boot_failures} times in a "
                "row); giving up — see the errors above")
        if self.quick_deaths >= MAX_QUICK_RESTARTS:
            raise FatalError(
                f"{self.label} keeps failing ({self.last_exit}, "
                f"{self.quick_deaths} quick restarts); giving up — see the errors above")
        self.last_error = None
        # the first restart is immediate (no refused or stalled connections); repeated quick
        # deaths back off exponentially, capped
        self.due = now + backoff(self.quick_deaths)
        self.restarts += 1


def backoff(quick_deaths: int) -> float:
    """Delay before restarting a child after its n-th quick death in a row."""
    return 0.0 if quick_deaths <= 1 else min(0.1 * 2 ** (quick_deaths - 2), 5.0)
