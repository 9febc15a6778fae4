"""The supervisor without forking: a fake ProcessOps plays the OS, the tests play the workers
through the child ends of real socketpairs."""

from __future__ import annotations

import signal
import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.channel import Channel
from llmctl.daemon.processes import supervisor as sup_module
from llmctl.daemon.processes.supervisor import (
    BOOT_FAILURES_MAX,
    FatalError,
    ProcessOps,
    Supervisor,
    Worker,
    backoff,
)


class FakeOps(ProcessOps):
    def __init__(self) -> None:
        self.next_pid = 1000
        self.children: dict[int, Channel] = {}
        self.killed: list[tuple[int, int]] = []
        self.exits: list[tuple[int, int]] = []
        self.small_buffers = False

    def start(self, worker: Worker, parent_end: socket.socket, child_end: socket.socket,
              in_child: Callable[[], None]) -> int:
        self.next_pid += 1
        child_end.settimeout(2)
        if self.small_buffers:
            parent_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        self.children[self.next_pid] = Channel(child_end)
        return self.next_pid

    def kill(self, pid: int, sig: int) -> None:
        self.killed.append((pid, sig))

    def reap(self) -> tuple[int, int] | None:
        return self.exits.pop(0) if self.exits else None


@pytest.fixture
def ops() -> FakeOps:
    return FakeOps()


@pytest.fixture
def sup(ops: FakeOps) -> Iterator[Supervisor]:
    listener = socket.socket()
    supervisor = Supervisor(listener, lambda s: 0, lambda s: 0, ops=ops)
    for worker in supervisor.workers.values():
        supervisor.spawn(worker)
    yield supervisor
    listener.close()
    for channel in ops.children.values():
        channel.close()


def child(sup: Supervisor, ops: FakeOps, role: str) -> Channel:
    pid = sup.workers[role].pid
    assert pid is not None
    return ops.children[pid]


def received(channel: Channel, kind: type[p.Message] | None = None) -> list[p.Message]:
    """What the supervisor sent to this worker so far (Workers updates skipped)."""
    channel.sock.settimeout(0.2)
    out: list[p.Message] = []
    try:
        while True:
            out += channel.messages()
    except TimeoutError:
        pass
    return [m for m in out if not isinstance(m, p.Workers) and (kind is None or
                                                                 isinstance(m, kind))]


def pump(sup: Supervisor, turns: int = 3) -> None:
    for _ in range(turns):
        sup.wait_and_route(0.05)


def test_command_and_answers_are_routed_by_opaque_id(sup: Supervisor, ops: FakeOps) -> None:
    proxy, lifecycle = child(sup, ops, "proxy"), child(sup, ops, "lifecycle")
    proxy.post(p.Switch("any-opaque id", "m"))
    pump(sup)
    assert received(lifecycle) == [p.Switch("any-opaque id", "m")]
    assert sup.switchboard.pending["any-opaque id"] is sup.workers["proxy"]
    lifecycle.post(p.Event("any-opaque id", "starting", {"model": "m"}))
    lifecycle.post(p.Reply("any-opaque id", True, {"model": "m"}))
    pump(sup)
    assert received(proxy) == [p.Event("any-opaque id", "starting", {"model": "m"}),
                               p.Reply("any-opaque id", True, {"model": "m"})]
    assert sup.switchboard.pending == {}


def test_state_goes_to_every_proxy_and_replies_to_the_one_that_asked(sup: Supervisor,
                                                                      ops: FakeOps) -> None:
    old, lifecycle = child(sup, ops, "proxy"), child(sup, ops, "lifecycle")
    old.post(p.Switch("1", "m"))
    pump(sup)
    sup.restart_proxy("test")
    new = child(sup, ops, "proxy")
    assert new is not old
    lifecycle.post(p.State({"state": "ready"}))
    lifecycle.post(p.Reply("1", True))
    pump(sup)
    assert received(old) == [p.State({"state": "ready"}), p.Reply("1", True)]
    assert received(new) == [p.State({"state": "ready"})]


def test_new_proxy_ready_retires_the_old_one(sup: Supervisor, ops: FakeOps) -> None:
    old_pid = sup.workers["proxy"].pid
    sup.restart_proxy("test")
    child(sup, ops, "proxy").post(p.Ready(1))
    pump(sup)
    assert (old_pid, signal.SIGUSR2) in ops.killed


def test_lifecycle_death_answers_what_it_owed(sup: Supervisor, ops: FakeOps) -> None:
    proxy = child(sup, ops, "proxy")
    proxy.post(p.Stop("s1"))
    pump(sup)
    ops.exits.append((sup.workers["lifecycle"].pid or 0, -signal.SIGKILL))
    sup.reap_workers()
    [reply] = received(proxy, p.Reply)
    assert isinstance(reply, p.Reply) and reply.id == "s1" and not reply.ok
    assert reply.error is not None and reply.error["retryable"] is True
    assert sup.switchboard.pending == {}


def test_command_while_lifecycle_restarts_is_refused_retryably(sup: Supervisor,
                                                               ops: FakeOps) -> None:
    proxy = child(sup, ops, "proxy")
    sup.workers["lifecycle"].channel = None
    proxy.post(p.Switch("x", "m"))
    pump(sup)
    [reply] = received(proxy, p.Reply)
    assert isinstance(reply, p.Reply) and reply.error and reply.error["code"] == "unavailable"


def test_duplicate_id_is_a_protocol_error(sup: Supervisor, ops: FakeOps) -> None:
    proxy = child(sup, ops, "proxy")
    proxy.post(p.Switch("same", "a"))
    proxy.post(p.Switch("same", "b"))
    pump(sup)
    [reply] = received(proxy, p.Reply)
    assert isinstance(reply, p.Reply) and reply.error and reply.error["code"] == "bad_message"
    assert received(child(sup, ops, "lifecycle")) == [p.Switch("same", "a")]


def test_unknown_message_is_logged_and_answered(sup: Supervisor, ops: FakeOps,
                                                caplog: pytest.LogCaptureFixture) -> None:
    proxy = child(sup, ops, "proxy")
    proxy.send({"type": "teleport", "id": "t1"})
    proxy.post(p.State({"state": "ready"}))  # a kind the proxy must not send
    pump(sup)
    replies = received(proxy, p.Reply)
    assert [(r.id, r.error and r.error["code"]) for r in replies  # type: ignore[attr-defined]
            ] == [("t1", "bad_message")]
    assert "unknown message type 'teleport'" in caplog.text
    assert sup.workers["proxy"].channel is not None  # a protocol mistake is not fatal
    assert ops.killed == []


def test_undecodable_frame_restarts_that_worker(sup: Supervisor, ops: FakeOps,
                                                caplog: pytest.LogCaptureFixture) -> None:
    lifecycle = child(sup, ops, "lifecycle")
    pid = sup.workers["lifecycle"].pid
    lifecycle.sock.sendall(struct.pack("!I", 5) + b"{oops")
    pump(sup)
    assert (pid, signal.SIGKILL) in ops.killed
    assert sup.workers["lifecycle"].channel is None
    assert "undecodable frame" in caplog.text and "restarting it" in caplog.text


def test_worker_that_does_not_read_is_restarted(ops: FakeOps,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sup_module, "SEND_TIMEOUT", 0.2)
    ops.small_buffers = True
    supervisor = Supervisor(socket.socket(), lambda s: 0, lambda s: 0, ops=ops)
    lifecycle = supervisor.workers["lifecycle"]
    supervisor.spawn(lifecycle)
    pid = lifecycle.pid
    for _ in range(10_000):  # nobody reads: the buffer fills, the send times out
        supervisor.send(lifecycle, p.ReloadConfig())
        if lifecycle.channel is None:
            break
    assert lifecycle.channel is None
    assert ops.killed == [(pid, signal.SIGKILL)]


def die(sup: Supervisor, ops: FakeOps, role: str, code: int) -> None:
    ops.exits.append((sup.workers[role].pid or 0, code))
    sup.reap_workers()
    sup.workers[role].due = 0.0
    sup.manage_workers()


def test_deaths_before_ready_halt_after_the_limit_with_the_last_error(sup: Supervisor,
                                                                      ops: FakeOps) -> None:
    for attempt in range(1, BOOT_FAILURES_MAX):
        child(sup, ops, "lifecycle").post(p.Failed(f"RuntimeError: attempt {attempt}"))
        pump(sup)
        die(sup, ops, "lifecycle", 1)
        assert sup.workers["lifecycle"].boot_failures == attempt
    child(sup, ops, "lifecycle").post(p.Failed("RuntimeError: the last one"))
    pump(sup)
    with pytest.raises(FatalError, match="keeps failing.*the last one.*giving up"):
        die(sup, ops, "lifecycle", 1)


def test_ready_resets_boot_failures(sup: Supervisor, ops: FakeOps) -> None:
    die(sup, ops, "proxy", 1)
    die(sup, ops, "proxy", 1)
    child(sup, ops, "proxy").post(p.Ready(5))
    pump(sup)
    die(sup, ops, "proxy", 1)  # a crash after ready: not a boot failure
    assert sup.workers["proxy"].boot_failures == 0
    assert sup.workers["proxy"].restarts == 3


def test_kill_from_outside_before_ready_is_not_a_boot_failure(sup: Supervisor,
                                                              ops: FakeOps) -> None:
    for _ in range(BOOT_FAILURES_MAX + 1):
        die(sup, ops, "proxy", -signal.SIGKILL)
    assert sup.workers["proxy"].boot_failures == 0


def test_quick_deaths_back_off_and_are_bounded(sup: Supervisor, ops: FakeOps) -> None:
    assert [backoff(n) for n in range(1, 5)] == [0.0, 0.0 + 0.1, 0.2, 0.4]
    assert backoff(50) == 5.0
    with pytest.raises(FatalError, match="quick restarts"):
        for _ in range(sup_module.MAX_QUICK_RESTARTS):
            child(sup, ops, "proxy").post(p.Ready(5))
            pump(sup, 1)
            die(sup, ops, "proxy", -signal.SIGSEGV)


def test_reload_command_reaches_the_lifecycle_and_is_answered(sup: Supervisor,
                                                              ops: FakeOps) -> None:
    proxy = child(sup, ops, "proxy")
    proxy.post(p.Reload("r1"))
    pump(sup)
    assert received(proxy) == [p.Reply("r1", True)]
    assert received(child(sup, ops, "lifecycle")) == [p.ReloadConfig()]
