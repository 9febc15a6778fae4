"""sockio's hot-path socket calls on real gevent socket pairs (and on plain sockets, which get
the standard calls): they read, send and tell a reusable connection exactly as the calls they
replace, without their extra syscalls."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
import pytest
from gevent import socket as gsocket

from llmctl.daemon.relay import sockio


def pair(timeout: float = 5.0) -> tuple[gsocket.socket, gsocket.socket]:
    a, b = gsocket.socketpair()
    a.settimeout(timeout)
    b.settimeout(timeout)
    return a, b


@contextmanager
def reading(timeout: float = 5.0) -> Iterator[tuple[sockio.SocketReader, gsocket.socket]]:
    """A SocketReader on one end of a gevent socket pair, and the other end; all closed after."""
    ours, theirs = pair(timeout)
    reader = sockio.SocketReader(ours)
    try:
        yield reader, theirs
    finally:
        reader.close()
        ours.close()
        theirs.close()


def test_wait_then_recv_into_reads_what_comes_later_and_the_end() -> None:
    with reading() as (reader, theirs):
        view = memoryview(bytearray(64))
        recv_into = reader.recv_into
        assert reader._timer is not None  # the gevent path, not the fallback
        later = gevent.spawn_later(0.05, theirs.sendall, b"data: one\n\n")
        n = recv_into(view)
        assert bytes(view[:n]) == b"data: one\n\n"
        later.join()
        theirs.sendall(b"two")  # already there: read at once
        assert bytes(view[:recv_into(view)]) == b"two"
        theirs.close()
        assert recv_into(view) == 0
        assert reader.woken == 3


def test_wait_then_recv_into_keeps_the_sockets_timeout() -> None:
    """A wait with nothing read for one to two timeouts raises as a socket timeout does."""
    with reading(timeout=0.1) as (reader, _):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            reader.recv_into(memoryview(bytearray(8)))
        assert 0.1 <= time.monotonic() - started < 1.0


def test_reads_keep_the_timeout_from_firing() -> None:
    """Bytes arriving more often than the timeout: no wait is cut, however long it all takes."""
    with reading(timeout=0.1) as (reader, theirs):
        def trickle() -> None:
            for _ in range(8):
                gevent.sleep(0.04)
                theirs.sendall(b"x")

        writer = gevent.spawn(trickle)
        view = memoryview(bytearray(8))
        got = b""
        while len(got) < 8:  # ~0.32 s in all: three timeouts
            got += bytes(view[:reader.recv_into(view)])
        writer.join()
        assert got == b"x" * 8


def test_a_closed_reader_leaves_no_timer_behind() -> None:
    with reading(timeout=0.05) as (reader, _):
        timer = reader._timer
        assert timer is not None and timer.active
        reader.close()
        assert not timer.active and reader._timer is None
        reader.close()  # twice is fine


def test_wait_returns_once_there_is_something_to_read() -> None:
    with reading() as (reader, theirs):
        gevent.spawn_later(0.05, theirs.sendall, b"HTTP/1.1 200 OK\r\n")
        reader.wait()
        assert reader.recv_into(memoryview(bytearray(64))) == 17  # there: its wait is at once
        assert reader.woken == 2


def test_send_all_sends_everything_even_past_a_full_buffer() -> None:
    ours, theirs = pair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * 4096  # 1 MiB: far more than one send takes
    received = bytearray()

    def drain() -> None:
        while len(received) < len(payload):
            received.extend(theirs.recv(65536))

    reader = gevent.spawn(drain)
    sockio.send_all(ours, payload)
    reader.join(timeout=10)
    assert bytes(received) == payload
    ours.close()
    theirs.close()


@pytest.mark.parametrize("make", [pair, lambda: socket.socketpair()])
def test_idle_and_open_tells_a_reusable_connection(make) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = make()
    assert sockio.idle_and_open(ours)  # idle, open
    theirs.sendall(b"junk")
    assert not sockio.idle_and_open(ours)  # the peer sent something unasked
    assert ours.recv(16) == b"junk"  # a peek: nothing was taken
    assert sockio.idle_and_open(ours)
    theirs.close()
    assert not sockio.idle_and_open(ours)  # the peer closed it
    ours.close()
    assert not sockio.idle_and_open(ours)  # and a closed socket is not reusable either


def test_plain_sockets_get_the_standard_calls() -> None:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    reader = sockio.SocketReader(ours)
    assert reader.recv_into == ours.recv_into and reader._timer is None
    theirs.sendall(b"x")
    reader.wait()  # returns at once: the plain socket's own reads block
    reader.close()
    assert ours.recv(1) == b"x"
    ours.close()
    theirs.close()
