"""The supervisor: the long-lived parent of llmctld.

It owns what must outlive a worker: the listening socket (bound once, inherited by every proxy
worker, so connections wait in the kernel backlog while a proxy restarts), the command
channels, and child reaping. It forks two workers and routes messages between them:

    proxy  --cmd-->  supervisor  --cmd-->  lifecycle
    proxy  <--event/reply/state--  supervisor  <--  lifecycle

Signal handlers only queue the signal and wake the loop (via set_wakeup_fd); the loop does
the work. It must never import gevent: the proxy worker patches itself after the fork.

Workers are plain os.fork() children and channels plain socketpairs, not multiprocess
Process/Pipe: the supervisor must be the only code that reaps its children (one waitpid(-1)
loop, which also reaps llama-servers re-parented to us as subreaper), and the proxy worker
must read its channel cooperatively, which a gevent socket does and a Connection does not.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmctl.daemon.channel import Channel, ChannelClosed, channel_pair

log = logging.getLogger("llmctld")

BOOT_ERROR = 3  # a worker's exit code for "could not even start": do not retry forever
RESTART_WINDOW = 30.0  # quick deaths within this many seconds count toward backoff
MAX_QUICK_RESTARTS = 8  # then the supervisor gives up
SHUTDOWN_TIMEOUT = 60.0
PR_SET_CHILD_SUBREAPER = 36


class FatalError(Exception):
    pass


@dataclass
class Worker:
    role: str
    target: Callable[[socket.socket, bool], int]  # (channel end, first start?) -> exit code
    pid: int | None = None
    channel: Channel | None = None
    started: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    boot_errors: int = 0
    due: float = 0.0  # when to (re)start, monotonic
    last_exit: str | None = None
    pending: set[str] = field(default_factory=set)  # command ids awaiting the worker's reply

    def info(self) -> dict[str, Any]:
        return {"pid": self.pid, "restarts": self.restarts, "last_exit": self.last_exit}


class Supervisor:
    def __init__(self, listener: socket.socket,
                 proxy_main: Callable[[socket.socket, bool], int],
                 lifecycle_main: Callable[[socket.socket, bool], int],
                 close_in_children: tuple[int, ...] = ()):
        self.listener = listener
        self.close_in_children = close_in_children
        self.workers = {
            "lifecycle": Worker("lifecycle", lifecycle_main),
            "proxy": Worker("proxy", proxy_main),
        }
        self.selector = selectors.DefaultSelector()
        self.signals: list[int] = []
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        # old proxy workers, by pid: still serving until their successor is ready (not yet
        # signalled), then draining; their channels stay open for replies meant for them
        self.retiring: dict[int, Channel | None] = {}
        self.signalled: set[int] = set()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # --- lifecycle of the supervisor ----------------------------------------------------------

    def run(self) -> int:
        from setproctitle import setproctitle

        setproctitle("llmctld: supervisor")
        self._become_subreaper()
        self._install_signals()
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        for worker in self.workers.values():
            self.spawn(worker)
        try:
            while True:
                self.wait_and_route(self._next_timeout())
                self.handle_signals()
                self.reap_workers()
                if self.stopping:
                    if not self.children_alive():
                        return self.exit_code
                    if time.monotonic() > self.stop_deadline:
                        self.kill_workers()
                        return self.exit_code or 1
                else:
                    self.manage_workers()
        except FatalError as e:
            log.error("%s", e)
            self.begin_shutdown(exit_code=1)
            return self._finish_shutdown()

    def _finish_shutdown(self) -> int:
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        while self.children_alive():
            if time.monotonic() > deadline:
                self.kill_workers()
                break
            self.wait_and_route(0.1)
            self.reap_workers()
        return self.exit_code

    def _become_subreaper(self) -> None:
        """A llama-server orphaned by a dying lifecycle worker is re-parented to us (and
        reaped by our loop) instead of init; the successor adopts it by pid."""
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            except (OSError, AttributeError):
                pass

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
                    signal.SIGUSR2):
            signal.signal(sig, self._queue_signal)

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # nothing else: the loop does the work

    def children_alive(self) -> bool:
        return bool(self.retiring) or any(w.pid is not None for w in self.workers.values())

    def _next_timeout(self) -> float:
        due = [w.due for w in self.workers.values() if w.pid is None and not self.stopping]
        if not due:
            return 1.0
        return max(0.0, min(1.0, min(due) - time.monotonic()))

    # --- signals --------------------------------------------------------------------------------

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("received %s: stopping", signal.Signals(sig).name)
                    self.begin_shutdown()
            elif sig == signal.SIGHUP:
                log.info("received SIGHUP: reloading configuration and models")
                self.broadcast({"type": "control", "action": "reload"})
            elif sig == signal.SIGUSR2:
                self.restart_proxy("SIGUSR2")

    def begin_shutdown(self, exit_code: int = 0) -> None:
        self.stopping = True
        self.exit_code = exit_code
        self.stop_deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        proxy = self.workers["proxy"]
        if proxy.pid is not None:
            _kill(proxy.pid, signal.SIGTERM)  # stop accepting and drain
        self.retire_old_proxies(signal.SIGTERM)
        self.send("lifecycle", {"type": "control", "action": "shutdown"})

    def restart_proxy(self, reason: str) -> None:
        """A graceful proxy restart (upgrade, leak): the old worker keeps serving until its
        successor reports ready, then drains. Both accept from the same socket meanwhile:
        nothing is refused and nothing waits."""
        old = self.workers["proxy"]
        if old.pid is None or self.stopping:
            return
        log.info("restarting the proxy worker (%s)", reason)
        if old.channel is not None:
            self.selector.modify(old.channel.fileno(), selectors.EVENT_READ, ("retiring", old.pid))
        self.retiring[old.pid] = old.channel
        old.pid, old.channel = None, None
        old.restarts += 1
        self.spawn(old)

    def retire_old_proxies(self, sig: int = signal.SIGUSR2) -> None:
        """USR2: drain and let kept-alive clients move over; TERM (shutdown): finish the
        requests in progress and go."""
        for pid in self.retiring:
            if pid not in self.signalled or sig == signal.SIGTERM:
                self.signalled.add(pid)
                _kill(pid, sig)

    # --- workers ------------------------------------------------------------------------------

    def spawn(self, worker: Worker) -> None:
        parent_end, child_end = channel_pair()
        first = worker.restarts == 0
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                parent_end.close()
                self._in_child(worker)
                code = worker.target(child_end, first)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        child_end.close()
        worker.pid, worker.started = pid, time.monotonic()
        worker.channel = Channel(parent_end)
        parent_end.settimeout(5.0)  # a hung worker must not hang the supervisor
        self.selector.register(worker.channel.fileno(), selectors.EVENT_READ, worker.role)
        log.info("started %s worker (pid %d)", worker.role, pid)
        self.send_workers()

    def _in_child(self, worker: Worker) -> None:
        from setproctitle import setproctitle

        setproctitle(f"llmctld: {worker.role}")
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.selector.close()
        for fd in (self._wake_r, self._wake_w, *self.close_in_children):
            os.close(fd)
        for other in self.workers.values():
            if other.channel is not None:
                other.channel.close()
        if worker.role != "proxy":
            self.listener.close()

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers.values() if w.pid == pid), None)
            if worker is None:
                if pid in self.retiring:
                    self._close_retired(pid)
                else:  # an orphan re-parented to us (subreaper): nothing to do but reap it
                    log.info("reaped orphaned process %d (%s)", pid, _describe(status))
                continue
            self._worker_exited(worker, status)

    def _close_retired(self, pid: int) -> None:
        channel = self.retiring.pop(pid, None)
        self.signalled.discard(pid)
        if channel is not None:
            try:
                self.selector.unregister(channel.fileno())
            except (KeyError, ValueError):
                pass
            channel.close()

    def _worker_exited(self, worker: Worker, status: int) -> None:
        worker.last_exit = _describe(status)
        if worker.channel is not None:
            try:
                self.selector.unregister(worker.channel.fileno())
            except (KeyError, ValueError):
                pass
            worker.channel.close()
        worker.pid, worker.channel = None, None
        for rid in sorted(worker.pending):  # commands it will never answer
            self.send_to_proxy({"type": "reply", "id": rid, "ok": False, "error": {
                "code": "unavailable", "retryable": True,
                "message": f"the {worker.role} worker stopped while handling this request; "
                           "retry in a moment"}})
        worker.pending.clear()
        if self.stopping:
            log.info("%s worker %s", worker.role, worker.last_exit)
            return
        log.warning("%s worker %s; restarting it", worker.role, worker.last_exit)
        now = time.monotonic()
        quick = now - worker.started < RESTART_WINDOW
        worker.quick_deaths = worker.quick_deaths + 1 if quick else 0
        booted = os.WIFEXITED(status) and os.WEXITSTATUS(status) == BOOT_ERROR
        worker.boot_errors = worker.boot_errors + 1 if booted else 0
        if worker.boot_errors >= 3 or worker.quick_deaths >= MAX_QUICK_RESTARTS:
            raise FatalError(
                f"the {worker.role} worker keeps failing ({worker.last_exit}, "
                f"{worker.quick_deaths} quick restarts); giving up — see the errors above")
        # the first restart is immediate (no refused or stalled connections); repeated quick
        # deaths back off exponentially, capped
        worker.due = now + (0.0 if worker.quick_deaths <= 1 else
                            min(0.1 * 2 ** (worker.quick_deaths - 2), 5.0))
        worker.restarts += 1
        self.send_workers()

    def manage_workers(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.pid is None and now >= worker.due:
                self.spawn(worker)

    def kill_workers(self) -> None:
        for pid in [w.pid for w in self.workers.values()] + list(self.retiring):
            if pid is not None:
                _kill(pid, signal.SIGKILL)

    # --- messages -------------------------------------------------------------------------------

    def wait_and_route(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data == "wake":
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            if isinstance(key.data, tuple):  # a retiring proxy worker
                channel = self.retiring.get(key.data[1])
                if channel is None:
                    continue
                try:
                    messages = channel.receive()
                except (ChannelClosed, OSError):
                    self.selector.unregister(key.fd)
                    channel.close()
                    self.retiring[key.data[1]] = None
                    continue
                for message in messages:
                    self.route("proxy", message)
                continue
            worker = self.workers[key.data]
            if worker.channel is None:
                continue
            try:
                messages = worker.channel.receive()
            except (ChannelClosed, OSError):
                self.selector.unregister(key.fd)
                worker.channel.close()
                worker.channel = None  # reaping will restart it
                continue
            for message in messages:
                self.route(worker.role, message)

    def route(self, source: str, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if source == "proxy":
            if kind == "ready":
                self.retire_old_proxies()
            elif kind == "cmd" and message.get("to") == "supervisor":
                self._supervisor_command(message)
            elif kind == "cmd":
                lifecycle = self.workers["lifecycle"]
                if lifecycle.channel is None:
                    self.send_to_proxy({"type": "reply", "id": message.get("id"), "ok": False,
                                        "error": {"code": "unavailable", "retryable": True,
                                                  "message": "the lifecycle worker is "
                                                  "restarting; retry in a moment"}})
                    return
                lifecycle.pending.add(str(message.get("id")))
                self.send("lifecycle", message)
        else:
            if kind == "reply":
                self.workers["lifecycle"].pending.discard(str(message.get("id")))
            if kind == "state":
                for channel in self.retiring.values():
                    self._send_channel(channel, message)
            self.send_to_proxy(message)

    def send_to_proxy(self, message: dict[str, Any]) -> None:
        """Replies and events go to the proxy worker that asked (its pid is in the command
        id, `p<pid>-<n>`), which may be a retiring one; everything else to the current one."""
        rid = str(message.get("id") or "")
        if rid.startswith("p") and "-" in rid:
            pid_text = rid[1:rid.index("-")]
            if pid_text.isdigit() and int(pid_text) in self.retiring:
                self._send_channel(self.retiring[int(pid_text)], message)
                return
        self.send("proxy", message)

    def _send_channel(self, channel: Channel | None, message: dict[str, Any]) -> None:
        if channel is None:
            return
        try:
            channel.send(message)
        except (ChannelClosed, OSError):
            pass

    def _supervisor_command(self, message: dict[str, Any]) -> None:
        if message.get("cmd") == "restart_proxy":
            self.send_to_proxy({"type": "reply", "id": message.get("id"), "ok": True})
            self.restart_proxy("requested over the API")
        elif message.get("cmd") == "reload":
            self.send("lifecycle", {"type": "control", "action": "reload"})
            self.send_to_proxy({"type": "reply", "id": message.get("id"), "ok": True})

    def send(self, role: str, message: dict[str, Any]) -> None:
        worker = self.workers[role]
        if worker.channel is None:
            return
        try:
            worker.channel.send(message)
        except (ChannelClosed, OSError) as e:
            if isinstance(e, OSError) and e.errno not in (None, errno.EPIPE, errno.ECONNRESET):
                log.warning("%s worker is not reading its channel (%s); restarting it", role, e)
                if worker.pid is not None:
                    _kill(worker.pid, signal.SIGKILL)

    def broadcast(self, message: dict[str, Any]) -> None:
        for role in self.workers:
            self.send(role, message)

    def send_workers(self) -> None:
        self.send("proxy", {"type": "workers", "supervisor_pid": os.getpid(),
                            "workers": {r: w.info() for r, w in self.workers.items()}})


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.WEXITSTATUS(status)}"
