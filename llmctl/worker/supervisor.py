"""`llmctl worker`'s process: one rpc-server in the foreground, kept running.

- It starts the rpc-server (its own process group, so a Ctrl-C in the terminal reaches only
  us; on Linux it dies with us, PR_SET_PDEATHSIG, even when we are SIGKILLed: no orphan
  holds the port or the device), its output appended to the log file.
- It is ready once it answers the RPC hello (core/rpc_probe.py; rpc-server's own banner is
  buffered until its first client, so the log cannot tell). A start that is not ready within
  BOOT_TIMEOUT is stopped and counts as a failed boot.
- A death is handled by the restart rules llmctld's supervisor follows (core/restarts.py):
  at once the first time, backing off while deaths come quickly; three failed boots in a row
  (a port in use, an unknown device) end the worker with exit code 1 and the reason read
  from the log.
- SIGTERM, SIGINT and SIGQUIT stop the rpc-server (SIGTERM, SIGKILL after STOP_GRACE) and end
  the worker with 0; SIGHUP restarts the rpc-server (after an upgrade of llama.cpp), which is
  not a failure. Signal handlers only queue the signal; the loop acts on it.

Once ready, the worker never probes its own rpc-server again: it serves one client at a time,
and a probe while llmctld's llama-server holds it would wait in its queue (see rpc_probe).
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmctl.core.exits import describe_exit
from llmctl.core.log_file import bound_log, open_for_start, read_log_tail
from llmctl.core.restarts import FatalError, RestartRecord
from llmctl.core.rpc_probe import probe
from llmctl.worker import rpc_server

log = logging.getLogger("llmctl.worker")

BOOT_TIMEOUT = 60.0  # GPU back ends take seconds to initialise; this is well past that
BOOT_POLL = 0.05
STOP_GRACE = 10.0
LOG_CHECK_EVERY = 5.0
LOG_MAX_BYTES = 10 * 1024 * 1024
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class RpcSupervisor:
    def __init__(self, argv: list[str], env: dict[str, str], options: rpc_server.ServerOptions,
                 log_path: Path, title: str):
        self.argv, self.env, self.options = argv, env, options
        self.log_path, self.title = log_path, title
        self.record = RestartRecord(label="rpc-server")
        self.child: subprocess.Popen[bytes] | None = None
        self.offset = 0  # where this start's output begins in the log
        self.signals: list[int] = []
        self.stopping = False
        self.restarting = False  # SIGHUP: this death is asked for
        self.boot_timed_out = False
        self.kill_at: float | None = None
        self._last_log_check = 0.0

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        from setproctitle import setproctitle

        setproctitle(f"llmctl worker: {self.title}")
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._queue_signal)
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ)
        try:
            while True:
                self.start_when_due()
                for _ in selector.select(self.next_timeout()):
                    _drain(wake_r)
                self.handle_signals()
                code = self.reap()
                if code is not None:
                    return code
                self.watch(time.monotonic())
        except FatalError as e:
            log.error("%s", e)
            return 1
        finally:
            self.kill_child()
            selector.close()

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # nothing else: the loop does the work

    def next_timeout(self) -> float:
        if self.child is None:
            return max(0.0, min(1.0, self.record.due - time.monotonic()))
        return BOOT_POLL if not self.record.ready else 1.0

    def start_when_due(self) -> None:
        if self.child is None and not self.stopping and time.monotonic() >= self.record.due:
            self.spawn()

    def spawn(self) -> None:
        headline = f"starting rpc-server: {' '.join(self.argv)}"
        self.offset = open_for_start(self.log_path, LOG_MAX_BYTES, headline)
        parent = os.getpid()
        with open(self.log_path, "ab", buffering=0) as out:
            self.child = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                close_fds=True, preexec_fn=lambda: _in_child(parent))
        self.record.started, self.record.ready = time.monotonic(), False
        self.boot_timed_out = False
        log.info("started rpc-server (pid %d) for %s; log %s", self.child.pid,
                 self.options.address, self.log_path)

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig in STOP_SIGNALS and not self.stopping:
                log.info("received %s: stopping rpc-server", signal.Signals(sig).name)
                self.stopping = True
                self.terminate_child()
            elif sig == signal.SIGHUP and not self.stopping and self.child is not None:
                log.info("received SIGHUP: restarting rpc-server")
                self.restarting = True
                self.terminate_child()

    def reap(self) -> int | None:
        """Look at the child: once it has ended, plan what comes next. Returns the worker's
        exit code when the worker is done."""
        if self.child is None:
            return 0 if self.stopping else None
        if (code := self.child.poll()) is None:
            return None
        pid, self.child, self.kill_at = self.child.pid, None, None
        self.record.last_exit = describe_exit(code)
        if self.stopping:
            log.info("rpc-server (pid %d) %s; stopped", pid, self.record.last_exit)
            return 0
        if self.restarting:
            self.restarting = False
            self.record.restarts += 1
            self.record.due = time.monotonic()
            return None
        tail = read_log_tail(self.log_path, self.offset, 12)
        why = rpc_server.diagnose(tail, self.options.address, self.log_path)
        if self.boot_timed_out:
            why = f"it did not answer on {self.options.address} within {BOOT_TIMEOUT:.0f}s"
            code = 1  # it failed to boot, although our own signal ended it
        self.record.last_error = why or (f"{self.record.last_exit}: {tail[-1]}" if tail
                                         else self.record.last_exit)
        died = f"rpc-server (pid {pid}) {self.record.last_exit}" + (f" ({why})" if why else "")
        try:
            self.record.schedule_restart(code, time.monotonic())
        except FatalError:
            log.warning("%s", died)
            raise  # give up: run() says why
        log.warning("%s; restarting it", died)
        return None

    def watch(self, now: float) -> None:
        """While booting: is it ready yet, or late? While stopping: is it time to SIGKILL?
        And keep its log bounded."""
        child = self.child
        if child is not None and self.kill_at is not None and now >= self.kill_at:
            log.warning("rpc-server (pid %d) did not stop within %.0fs; killing it",
                        child.pid, STOP_GRACE)
            _signal(child, signal.SIGKILL)
            self.kill_at = None
        if child is not None and not self.record.ready and not self.stopping and \
                self.kill_at is None:
            self.check_ready(child, now)
        if now - self._last_log_check >= LOG_CHECK_EVERY:
            self._last_log_check = now
            bound_log(self.log_path, LOG_MAX_BYTES)

    def check_ready(self, child: subprocess.Popen[bytes], now: float) -> None:
        found = probe(self.options.host, self.options.port, timeout=0.5)
        if found.state == "down":
            if now - self.record.started > BOOT_TIMEOUT:
                self.boot_timed_out = True
                self.terminate_child()
            return
        self.record.mark_ready()
        devices = ", ".join(f"{d.free // 2**20} of {d.total // 2**20} MiB free"
                            for d in found.devices) or "busy: a client connected first"
        log.info("rpc-server (pid %d) ready on %s (RPC protocol %s; %d device(s): %s)",
                 child.pid, self.options.address, found.version or "?", len(found.devices),
                 devices)

    # --- signals to the child -----------------------------------------------------------------

    def terminate_child(self) -> None:
        if self.child is not None:
            _signal(self.child, signal.SIGTERM)
            self.kill_at = time.monotonic() + STOP_GRACE

    def kill_child(self) -> None:
        """On the way out, whatever happened: the rpc-server does not outlive us."""
        if self.child is not None and self.child.poll() is None:
            _signal(self.child, signal.SIGKILL)
            self.child.wait(5)


def _signal(child: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(child.pid, sig)  # its own group: anything it started goes too
    except ProcessLookupError:
        pass


def _in_child(parent: int) -> None:
    """In the forked child before exec: a process group of its own, and (Linux) death with
    the supervisor. Safe here: the supervisor runs no threads."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the supervisor died before prctl: do not start at all
            os._exit(1)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
