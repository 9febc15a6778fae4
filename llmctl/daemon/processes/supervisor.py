"""The supervisor: the long-lived parent of llmctld.

It owns what must outlive a worker: the listening socket (bound once, inherited by every proxy
worker, so connections wait in the kernel backlog while a proxy restarts), the command
channels, and child reaping. It forks two workers (workers.py) and routes messages between
them (switchboard.py).

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

Everything that touches processes goes through one seam, workers.ProcessOps (fork a worker,
signal, reap), so unit tests drive the supervisor with a fake one and never fork.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time

from llmctl.core.exits import describe_exit
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.channel import Channel, ChannelBroken, ChannelClosed, channel_pair
from llmctl.daemon.processes import imported
from llmctl.daemon.processes.switchboard import Switchboard
from llmctl.daemon.processes.workers import (
    BOOT_FAILURES_MAX,
    MAX_QUICK_RESTARTS,
    FatalError,
    ProcessOps,
    Target,
    Worker,
    backoff,
    become_subreaper,
)

__all__ = ["BOOT_FAILURES_MAX", "MAX_QUICK_RESTARTS", "FatalError", "ProcessOps", "Supervisor",
           "Worker", "backoff"]

log = logging.getLogger("llmctld")

SHUTDOWN_TIMEOUT = 60.0
SEND_TIMEOUT = 5.0  # a worker that does not read its channel this long is restarted


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
        self.switchboard = Switchboard(self.workers, self.retiring, self.send, own={
            p.Ready: self._ready, p.Failed: self._failed, p.Reload: self._reload,
            p.RestartProxy: self._restart_requested,
        })
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # --- lifecycle of the supervisor ----------------------------------------------------------

    def run(self) -> int:
        from setproctitle import setproctitle

        setproctitle("llmctld: supervisor")
        become_subreaper()
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
        self.switchboard.hand_over(current, old)  # its replies still go to it
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
        pid = self.ops.start(worker, parent_end, child_end, lambda: self._in_child(worker))
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
                self.switchboard.forget_sender(pid)
            else:  # an orphan re-parented to us (subreaper): nothing to do but reap it
                log.info("reaped orphaned process %d (%s)", pid, describe_exit(code))

    def _worker_exited(self, worker: Worker, code: int) -> None:
        worker.last_exit = describe_exit(code)
        self._drop_channel(worker)
        pid, worker.pid = worker.pid, None
        if worker.role == "lifecycle":
            self.switchboard.cut_pending()
        elif pid is not None:
            self.switchboard.forget_sender(pid)
        if self.stopping:
            log.info("%s worker %s", worker.role, worker.last_exit)
            return
        log.warning("%s worker %s; restarting it", worker.role, worker.last_exit)
        worker.schedule_restart(code, time.monotonic())  # or FatalError: give up
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
                self.switchboard.route(worker, message)

    def _ready(self, source: Worker, message: p.Ready) -> None:
        source.mark_ready()
        if source.role == "proxy":
            self.retire_old_proxies()  # its successor serves: the old one may drain
            imported.dump("supervisor")

    def _failed(self, source: Worker, message: p.Failed) -> None:
        source.last_error = message.error

    def _reload(self, source: Worker, message: p.Reload) -> None:
        self.send(self.workers["lifecycle"], p.ReloadConfig())
        self.send(source, p.Reply(message.id, True))

    def _restart_requested(self, source: Worker, message: p.RestartProxy) -> None:
        self.send(source, p.Reply(message.id, True))
        self.restart_proxy("requested over the API")

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

