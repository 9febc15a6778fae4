"""The lifecycle worker process: a plain (non-gevent) loop that feeds channel messages to
backend.lifecycle.Lifecycle and gives it time to tick in between. It reports Ready to the
supervisor once boot (adoption and clean-up) is done: dying before that is a boot failure.

Fault injection for tests only (documented in docs/architecture.md): LLMCTL_TEST_FAULT names
one fault for this worker — `lifecycle-boot` raises during boot, `lifecycle-garbage` writes an
undecodable frame after Ready, `lifecycle-deaf` stops reading its channel after Ready. With
LLMCTL_TEST_FAULT_ONCE=<path> a fault fires only while that file does not exist yet (the
worker creates it), so the restarted worker is healthy.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from pathlib import Path
from typing import Any

from llmctl.core.paths import Paths
from llmctl.daemon.backend.lifecycle import Lifecycle
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.channel import Channel, ChannelClosed
from llmctl.daemon.processes import imported, slim

log = logging.getLogger("llmctld.lifecycle")


def run(sock: socket.socket, paths: Paths, daemon_info: dict[str, Any]) -> int:
    channel = Channel(sock)
    terminate = []
    # Ctrl-C reaches the whole foreground group: the supervisor decides, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: terminate.append(True))

    lifecycle = Lifecycle(paths, channel.post, daemon_info)
    first_boot = lifecycle.first_boot_of_daemon()  # before boot() writes state.json
    if injected_fault("lifecycle-boot"):
        raise RuntimeError("injected boot failure (LLMCTL_TEST_FAULT)")
    for note in lifecycle.boot():
        log.info(note)
    channel.post(p.Ready(os.getpid()))
    imported.dump("lifecycle")
    slim.give_back_free_memory()
    if first_boot:
        lifecycle.load_default_on_startup()
    if injected_fault("lifecycle-garbage"):
        channel.sock.sendall(b"\x00\x00\x00\x05{oops")
    if injected_fault("lifecycle-deaf"):
        while True:  # never read again: the supervisor's sends time out
            time.sleep(1)
    selector = selectors.DefaultSelector()
    selector.register(channel.fileno(), selectors.EVENT_READ)
    exits = ExitWatch(selector)
    try:
        while not lifecycle.finished:
            if terminate and not lifecycle.shutting_down:
                lifecycle.shutdown()
                continue
            exits.watch(lifecycle.proc.pid if lifecycle.proc is not None else None)
            ready = selector.select(lifecycle.next_timeout())
            if any(key.fd == channel.fileno() for key, _ in ready):
                for message in channel.messages():
                    lifecycle.handle(message)
            lifecycle.tick(exited=exits.seen(ready))
    except ChannelClosed:
        # The supervisor is gone (killed?). Leave the backend running: the next llmctld
        # adopts it through state.json.
        log.warning("supervisor went away; leaving llama-server for adoption")
    return 0


class ExitWatch:
    """Wakes the loop the moment llama-server exits (a pidfd in the selector, Linux 5.3+),
    so a stop or a crash is seen at once rather than at the next poll (a switch waited up to
    STOP_POLL more for its old model to go). Where there are no pidfds the polls remain."""

    def __init__(self, selector: selectors.BaseSelector):
        self.selector = selector
        self.pid: int | None = None  # the process watched, or last watched (then fd is None)
        self.fd: int | None = None

    def watch(self, pid: int | None) -> None:
        if pid == self.pid:
            return
        self._drop()
        self.pid = pid
        if pid is None or not hasattr(os, "pidfd_open"):
            return
        try:
            self.fd = os.pidfd_open(pid)
        except OSError:  # gone already, or not supported by this kernel: the polls see it
            return
        self.selector.register(self.fd, selectors.EVENT_READ)

    def seen(self, ready: list[tuple[selectors.SelectorKey, int]]) -> bool:
        """After select(): whether the watched process exited. A pidfd that fired stays
        readable, so it is dropped (the pid stays noted, so it is not watched again)."""
        if self.fd is not None and any(key.fd == self.fd for key, _ in ready):
            self._drop()
            return True
        return False

    def _drop(self) -> None:
        if self.fd is not None:
            self.selector.unregister(self.fd)
            os.close(self.fd)
            self.fd = None


def injected_fault(name: str) -> bool:
    """Whether the test asked for this fault (see the module docstring)."""
    if os.environ.get("LLMCTL_TEST_FAULT") != name:
        return False
    once = os.environ.get("LLMCTL_TEST_FAULT_ONCE")
    if once:
        marker = Path(once)
        if marker.exists():
            return False
        marker.touch()
    return True
