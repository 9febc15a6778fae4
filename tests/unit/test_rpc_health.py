"""The RPC health checks without a llama.cpp build: core/rpc_probe.py and daemon/rpc/health.py
against a scripted rpc-server on loopback that speaks the hello, device count and memory
commands of protocol 7 and counts its connections; and the wording of a refusal."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from llmctl.core.rpc_probe import probe, probe_all
from llmctl.daemon.rpc.health import Checker, Holder
from llmctl.daemon.rpc.records import WorkerHealth, refusal

from harness import wait_for


class ScriptedRpcServer:
    """Accepts one client at a time, like rpc-server. `answer=False`: it never accepts (as
    when another client holds it); `major` sets the protocol it claims."""

    def __init__(self, answer: bool = True, major: int = 7):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.major = major
        if answer:
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        while True:
            head = _recv(conn, 9)
            if head is None:
                return
            command, size = head[0], struct.unpack("<Q", head[1:])[0]
            _recv(conn, size)
            if command == 14:
                body = bytes([self.major, 0, 0, 0]) + bytes(24)
            elif command == 15:
                body = struct.pack("<I", 2)
            else:
                body = struct.pack("<QQ", 3 * 2**30, 8 * 2**30)
            conn.sendall(struct.pack("<Q", len(body)) + body)

    def close(self) -> None:
        self.listener.close()


def _recv(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


@pytest.fixture
def server() -> Iterator[ScriptedRpcServer]:
    s = ScriptedRpcServer()
    yield s
    s.close()


def free_port() -> int:
    with socket.socket() as s:  # closed at once: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_reads_version_and_devices(server: ScriptedRpcServer) -> None:
    found = probe("127.0.0.1", server.port)
    assert found.state == "up" and found.version == "7.0.0"
    assert [(d.free, d.total) for d in found.devices] == [(3 * 2**30, 8 * 2**30)] * 2


def test_probe_tells_down_busy_and_a_foreign_protocol() -> None:
    refused = probe("127.0.0.1", free_port())
    assert refused.state == "down" and "connection refused" in (refused.error or "")
    holder = ScriptedRpcServer(answer=False)  # listens, never accepts: held by someone
    old = ScriptedRpcServer(major=3)
    try:
        busy = probe("127.0.0.1", holder.port, timeout=0.3)
        assert busy.state == "busy"
        assert "serves one client at a time" in (busy.error or "")
        foreign = probe("127.0.0.1", old.port)
        assert foreign.state == "down" and "protocol 3.0.0" in (foreign.error or "")
    finally:
        holder.close()
        old.close()


def test_probe_all_takes_one_timeout_for_all() -> None:
    holders = [ScriptedRpcServer(answer=False) for _ in range(3)]
    try:
        started = time.monotonic()
        found = probe_all([("127.0.0.1", h.port) for h in holders], timeout=0.4)
        assert [f.state for f in found] == ["busy"] * 3
        assert time.monotonic() - started < 1.0  # not 3 x 0.4 s
    finally:
        for h in holders:
            h.close()


def test_the_checker_publishes_changes_and_keeps_since(server: ScriptedRpcServer) -> None:
    checker = Checker(timeout=0.3)
    dead = free_port()
    checker.configure({"a": f"127.0.0.1:{server.port}", "b": f"127.0.0.1:{dead}"}, 0.2)
    health = wait_for(lambda: (h := checker.snapshot())["b"].state == "down" and
                      h["a"].state == "up" and h, 5, "a first round")
    assert health["a"].devices == [{"free": 3 * 2**30, "total": 8 * 2**30}] * 2
    generation, since = checker.generation, health["a"].since
    wait_for(lambda: checker.snapshot()["a"].checked_at != health["a"].checked_at, 5,
             "another round")
    assert checker.snapshot()["a"].since == since  # still up: since stays,
    assert checker.generation > generation  # while the fresh look is published
    generation = checker.generation
    server.close()
    wait_for(lambda: checker.snapshot()["a"].state == "down", 5, "a to be seen down")
    assert checker.generation > generation


def test_a_worker_our_llama_server_holds_is_judged_by_its_connection_not_probed(
        server: ScriptedRpcServer) -> None:
    """A probe would queue behind the holder's connection (rpc-server serves one client):
    the checker looks at the holder's own TCP connection instead. Here the holder is this
    test process, with a live connection to the worker."""
    checker = Checker(timeout=0.3)
    address = f"127.0.0.1:{server.port}"
    checker.configure({"a": address}, 60)  # one round by the thread; the test does the rest
    wait_for(lambda: checker.snapshot()["a"].state == "up", 5, "a up")
    held = socket.create_connection(("127.0.0.1", server.port))
    wait_for(lambda: server.accepted == 2, 5, "the holder's connection to be accepted")
    accepted = server.accepted
    checker.hold(Holder(pid=_own_pid(), model="big", addresses=frozenset({address}),
                        ready=True))
    checker.round(None)
    checker.round(None)
    found = checker.snapshot()["a"]
    assert (found.state, found.in_use) == ("up", "big")
    assert server.accepted == accepted  # no probe reached it
    held.shutdown(socket.SHUT_RDWR)
    held.close()
    checker.round(None)
    found = checker.snapshot()["a"]
    assert found.state == "down" and "lost its connection" in (found.error or "")


def _own_pid() -> int:
    import os

    return os.getpid()


def test_a_refusal_names_the_worker_and_what_to_do() -> None:
    cfg = {"workers": {"a": "10.0.0.2:1", "b": "10.0.0.3:1"}, "llama": {"workers": "all"}}
    health = {"a": WorkerHealth("a", "10.0.0.2:1", state="up"),
              "b": WorkerHealth("b", "10.0.0.3:1", state="down", error="connection refused")}
    assert refusal("big", cfg, health) == (
        "big needs RPC worker b (10.0.0.3:1), which is down: connection refused; start it "
        "(`llmctl worker` on that host) or remove b from big's llama.workers")
    health["b"].state, health["b"].error = "busy", "another client holds it"
    assert "which is busy: another client holds it; stop the other client" in \
        (refusal("big", cfg, health) or "")
    health["b"].state = "unchecked"  # not looked at yet: the load itself will tell
    assert refusal("big", cfg, health) is None
    assert refusal("big", {**cfg, "llama": {"workers": []}}, {}) is None
