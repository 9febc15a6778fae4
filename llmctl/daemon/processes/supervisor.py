"""The supervisor: the long-lived parent of llmctld.

It owns what must outlive a worker: the listening socket (bound once, inherited by every proxy
worker, so connections wait in the kernel backlog while a proxy restarts), the command
channels, and child reaping. It forks two workers and routes messages between them:

    proxy  --command-->  supervisor  --command-->  lifecycle
    proxy  <--event/reply/state--  supervisor  <--  lifecycle

Routing is by the protocol's record types (one table per source, see `_tables`), and replies
find their way back through `pending`, a map from command id to the proxy worker (current or
retiring) that sent it; ids are opaque.

Defences:
- a channel that breaks (send timeout: the worker does not read; a torn, oversized or
  undecodable frame) gets that worker SIGKILLed and restarted; the supervisor logs why;
- a worker that dies before it reported Ready (exits, or crashes on a signal other than a
  KILL/TERM from outside) is a boot failure; BOOT_FAILURES_MAX of them in a row end llmctld
  with exit code 1 and the worker's last error; quick deaths after boot back off and are
  bounded by MAX_QUICK_RESTARTS.

Signal handlers only queue the signal and wake the loop (via set_wakeup_fd); the loop does
the work. It must never import gevent: the proxy worker patches itself after the fork.

Test seam: LLMCTL_TEST_CHANNEL_SNDBUF=<bytes> shrinks the send buffer of the supervisor's
channel ends, so a worker that stops reading (lifecycle_worker's injected faults) blocks a
send after a few messages (docs/architecture.md, "Fault injection").

Everything that touches processes goes through one seam, `ProcessOps` (fork a worker, signal,
reap), so unit tests drive the supervisor with a fake one and never fork.

Workers are plain os.fork() children and channels plain socketpairs, not multiprocess
Process/Pipe: the supervisor must be the only code that reaps its children (one waitpid(-1)
loop, which also reaps llama-servers re-parented to us as subreaper), and the proxy worker
must read its channel cooperatively, which a gevent socket does and a Connection does not.
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmctl.daemon.backend.exits import describe_exit
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.channel import Channel, ChannelBroken, ChannelClosed, channel_pair

log = logging.getLogger("llmctld")

RESTART_WINDOW = 30.0  # quick deaths within this many seconds count toward backoff
MAX_QUICK_RESTARTS = 8  # then the supervisor gives up
BOOT_FAILURES_MAX = 3  # deaths before Ready in a row, then the supervisor gives up
SHUTDOWN_TIMEOUT = 60.0
SEND_TIMEOUT = 5.0  # a worker that does not read its channel this long is restarted
PR_SET_CHILD_SUBREAPER = 36
# killed from outside (a user, the chaos test, ourselves): not the worker failing to boot
_EXTERNAL_SIGNALS = (-signal.SIGKILL, -signal.SIGTERM)

Target = Callable[[socket.socket], int]  # (the worker's channel end) -> exit code


class FatalError(Exception):
    pass


@dataclass
class Worker:
    role: str
    target: Target | None  # None for a retiring proxy (never respawned)
    pid: int | None = None
    channel: Channel | None = None
    started: float = 0.0
    ready: bool = False
    restarts: int = 0
    quick_deaths: int = 0
    boot_failures: int = 0
    due: float = 0.0  # when to (re)start, monotonic
    last_exit: str | None = None
    last_error: str | None = None

    def info(self) -> dict[str, Any]:
        return {"pid": self.pid, "restarts": self.restarts, "last_exit": self.last_exit}


class ProcessOps:
    """The OS seam: the real one forks, signals and reaps."""

    def start(self, supervisor: Supervisor, worker: Worker, parent_end: socket.socket,
              child_end: socket.socket) -> int:
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            supervisor._in_child(worker)
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


class Supervisor:
    def __init__(self, listener: socket.socket, proxy_main: Target, lifecycle_main: Target,
                 close_in_children: tuple[int, ...] = (), ops: ProcessOps | None = None):
        self.listener = listener
        self.close_in_children = close_in_children
        self.ops = ops or ProcessOps()
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
        self.retiring: dict[int, Worker] = {}
        self.signalled: set[int] = set()
        # command id -> the proxy worker that sent it, until the lifecycle worker replies
        self.pending: dict[str, Worker] = {}
        self._from_proxy: dict[type[p.Message], Callable[..., None]] = {
            p.Ready: self._proxy_ready, p.Failed: self._failed,
            p.Reload: self._reload, p.RestartProxy: self._restart_requested,
            p.Switch: self._forward, p.Stop: self._forward, p.Status: self._forward,
            p.Ensure: self._forward,
        }
        self._from_lifecycle: dict[type[p.Message], Callable[..., None]] = {
            p.Ready: self._ready, p.Failed: self._failed, p.Event: self._to_sender,
            p.Reply: self._to_sender, p.State: self._broadcast_state,
        }
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
        try:
            for worker in self.workers.values():
                self.spawn(worker)
            while True:
                self.step(self._next_timeout())
                if self.stopping:
                    if not self.children_alive():
                        return self.exit_code
                    if time.monotonic() > self.stop_deadline:
                        self.kill_workers()
                        return self.exit_code or 1
        except FatalError as e:
            log.error("%s", e)
            self.begin_shutdown(exit_code=1)
            return self._finish_shutdown()

    def step(self, timeout: float) -> None:
        """One turn of the loop (unit tests call it directly)."""
        self.wait_and_route(timeout)
        self.handle_signals()
        self.reap_workers()
        if not self.stopping:
            self.manage_workers()

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
                for worker in self.workers.values():
                    self.send(worker, p.ReloadConfig())
            elif sig == signal.SIGUSR2:
                self.restart_proxy("SIGUSR2")

    def begin_shutdown(self, exit_code: int = 0) -> None:
        self.stopping = True
        self.exit_code = exit_code
        self.stop_deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        proxy = self.workers["proxy"]
        if proxy.pid is not None:
            self.ops.kill(proxy.pid, signal.SIGTERM)  # stop accepting and drain
        self.retire_old_proxies(signal.SIGTERM)
        self.send(self.workers["lifecycle"], p.Shutdown())

    def restart_proxy(self, reason: str) -> None:
        """A graceful proxy restart (upgrade, leak): the old worker keeps serving until its
        successor reports ready, then drains. Both accept from the same socket meanwhile:
        nothing is refused and nothing waits."""
        current = self.workers["proxy"]
        if current.pid is None or self.stopping:
            return
        log.info("restarting the proxy worker (%s)", reason)
        old = Worker("proxy", None, pid=current.pid, channel=current.channel, ready=True)
        if old.channel is not None:
            self.selector.modify(old.channel.fileno(), selectors.EVENT_READ, old)
        self.retiring[current.pid] = old
        for rid, sender in self.pending.items():  # its replies still go to it
            if sender is current:
                self.pending[rid] = old
        current.pid, current.channel, current.ready = None, None, False
        current.restarts += 1
        self.spawn(current)

    def retire_old_proxies(self, sig: int = signal.SIGUSR2) -> None:
        """USR2: drain and let kept-alive clients move over; TERM (shutdown): finish the
        requests in progress and go."""
        for pid in self.retiring:
            if pid not in self.signalled or sig == signal.SIGTERM:
                self.signalled.add(pid)
                self.ops.kill(pid, sig)

    # --- workers ------------------------------------------------------------------------------

    def spawn(self, worker: Worker) -> None:
        parent_end, child_end = channel_pair()
        pid = self.ops.start(self, worker, parent_end, child_end)
        worker.pid, worker.started, worker.ready = pid, time.monotonic(), False
        worker.channel = Channel(parent_end)
        parent_end.settimeout(SEND_TIMEOUT)  # a hung worker must not hang the supervisor
        if os.environ.get("LLMCTL_TEST_CHANNEL_SNDBUF"):  # tests only: fill up in a few sends
            parent_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                  int(os.environ["LLMCTL_TEST_CHANNEL_SNDBUF"]))
        self.selector.register(worker.channel.fileno(), selectors.EVENT_READ, worker)
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
        for other in [*self.workers.values(), *self.retiring.values()]:
            if other.channel is not None:
                other.channel.close()
        if worker.role != "proxy":
            self.listener.close()

    def reap_workers(self) -> None:
        while (ended := self.ops.reap()) is not None:
            pid, code = ended
            worker = next((w for w in self.workers.values() if w.pid == pid), None)
            if worker is not None:
                self._worker_exited(worker, code)
            elif pid in self.retiring:
                self._drop_channel(self.retiring.pop(pid))
                self.signalled.discard(pid)
                self._forget_sender(pid)
            else:  # an orphan re-parented to us (subreaper): nothing to do but reap it
                log.info("reaped orphaned process %d (%s)", pid, describe_exit(code))

    def _worker_exited(self, worker: Worker, code: int) -> None:
        worker.last_exit = describe_exit(code)
        self._drop_channel(worker)
        pid, worker.pid = worker.pid, None
        if worker.role == "lifecycle":
            for rid in sorted(self.pending):  # commands it will never answer
                self._answer_pending(p.error_reply(
                    rid, "unavailable", "the lifecycle worker stopped while handling this "
                    "request; retry in a moment", retryable=True))
        elif pid is not None:
            self._forget_sender(pid)
        if self.stopping:
            log.info("%s worker %s", worker.role, worker.last_exit)
            return
        log.warning("%s worker %s; restarting it", worker.role, worker.last_exit)
        now = time.monotonic()
        quick = now - worker.started < RESTART_WINDOW
        worker.quick_deaths = worker.quick_deaths + 1 if quick else 0
        if not worker.ready and code not in _EXTERNAL_SIGNALS:
            worker.boot_failures += 1
        else:
            worker.boot_failures = 0
        if worker.boot_failures >= BOOT_FAILURES_MAX:
            raise FatalError(
                f"the {worker.role} worker keeps failing before it is ready "
                f"({worker.last_error or worker.last_exit}; {worker.boot_failures} times in a "
                "row); giving up — see the errors above")
        if worker.quick_deaths >= MAX_QUICK_RESTARTS:
            raise FatalError(
                f"the {worker.role} worker keeps failing ({worker.last_exit}, "
                f"{worker.quick_deaths} quick restarts); giving up — see the errors above")
        worker.last_error = None
        # the first restart is immediate (no refused or stalled connections); repeated quick
        # deaths back off exponentially, capped
        worker.due = now + backoff(worker.quick_deaths)
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
                self.ops.kill(pid, signal.SIGKILL)

    def _drop_channel(self, worker: Worker) -> None:
        if worker.channel is None:
            return
        try:
            self.selector.unregister(worker.channel.fileno())
        except (KeyError, ValueError):
            pass
        worker.channel.close()
        worker.channel = None

    def _broken(self, worker: Worker, why: str) -> None:
        """The channel cannot be trusted any more: restart the worker (reaping does it)."""
        log.warning("%s worker (pid %s): %s; restarting it", worker.role, worker.pid, why)
        self._drop_channel(worker)
        if worker.pid is not None:
            self.ops.kill(worker.pid, signal.SIGKILL)

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
            worker: Worker = key.data
            if worker.channel is None:
                continue
            try:
                messages = worker.channel.messages()
            except ChannelBroken as e:
                self._broken(worker, str(e))
                continue
            except (ChannelClosed, OSError):
                self._drop_channel(worker)  # reaping will restart it
                continue
            for message in messages:
                self.route(worker, message)

    def route(self, source: Worker, message: p.Message) -> None:
        table = self._from_lifecycle if source.role == "lifecycle" else self._from_proxy
        handler = table.get(type(message))
        if handler is not None:
            handler(source, message)
            return
        p.dispatch({}, message, f"supervisor (from the {source.role} worker)",
                   answer=lambda reply: self.send(source, reply))

    def _proxy_ready(self, source: Worker, message: p.Ready) -> None:
        self._ready(source, message)
        self.retire_old_proxies()

    def _ready(self, source: Worker, message: p.Ready) -> None:
        source.ready = True
        source.boot_failures = 0

    def _failed(self, source: Worker, message: p.Failed) -> None:
        source.last_error = message.error

    def _reload(self, source: Worker, message: p.Reload) -> None:
        self.send(self.workers["lifecycle"], p.ReloadConfig())
        self.send(source, p.Reply(message.id, True))

    def _restart_requested(self, source: Worker, message: p.RestartProxy) -> None:
        self.send(source, p.Reply(message.id, True))
        self.restart_proxy("requested over the API")

    def _forward(self, source: Worker, message: p.Command) -> None:
        lifecycle = self.workers["lifecycle"]
        if message.id in self.pending:
            self.send(source, p.error_reply(message.id, "bad_message",
                                            f"command id {message.id!r} is already in use"))
            return
        if lifecycle.channel is None:
            self.send(source, p.error_reply(message.id, "unavailable", "the lifecycle worker "
                                            "is restarting; retry in a moment",
                                            retryable=True))
            return
        self.pending[message.id] = source
        self.send(lifecycle, message)

    def _to_sender(self, source: Worker, message: p.Event | p.Reply) -> None:
        if isinstance(message, p.Reply):
            self._answer_pending(message)
            return
        sender = self.pending.get(message.id)
        if sender is not None:
            self.send(sender, message)

    def _answer_pending(self, reply: p.Reply) -> None:
        sender = self.pending.pop(reply.id, None)
        if sender is None:
            log.debug("reply for %s, which nobody waits for (its worker is gone)", reply.id)
            return
        self.send(sender, reply)

    def _forget_sender(self, pid: int) -> None:
        for rid in [rid for rid, w in self.pending.items() if w.pid == pid or w.pid is None]:
            del self.pending[rid]

    def _broadcast_state(self, source: Worker, message: p.State) -> None:
        for worker in [self.workers["proxy"], *self.retiring.values()]:
            self.send(worker, message)

    def send(self, worker: Worker, message: p.Message) -> None:
        if worker.channel is None:
            return
        try:
            worker.channel.post(message)
        except ChannelBroken as e:
            self._broken(worker, str(e))
        except ChannelClosed:
            self._drop_channel(worker)  # it died: reaping restarts it

    def send_workers(self) -> None:
        self.send(self.workers["proxy"], p.Workers(
            {r: w.info() for r, w in self.workers.items()}))


def backoff(quick_deaths: int) -> float:
    """Delay before restarting a worker after its n-th quick death in a row."""
    return 0.0 if quick_deaths <= 1 else min(0.1 * 2 ** (quick_deaths - 2), 5.0)
