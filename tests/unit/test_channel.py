"""llmctl.daemon.ipc.channel: length-framed JSON messages over a socketpair."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator

import pytest

from llmctl.daemon.ipc.channel import MAX_MESSAGE, Channel, ChannelClosed, channel_pair


@pytest.fixture
def ends() -> Iterator[tuple[Channel, Channel]]:
    a, b = channel_pair()
    for sock in (a, b):
        sock.settimeout(5)  # a bug must fail the test, not hang it
    left, right = Channel(a), Channel(b)
    yield left, right
    left.close()
    right.close()


def frame(message: dict) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack("!I", len(payload)) + payload


def test_pair_is_connected_unix_stream() -> None:
    a, b = channel_pair()
    try:
        assert a.family == socket.AF_UNIX and a.type == socket.SOCK_STREAM
        a.sendall(b"x")
        assert b.recv(1) == b"x"
    finally:
        a.close()
        b.close()


def test_round_trip_both_ways(ends: tuple[Channel, Channel]) -> None:
    left, right = ends
    message = {"type": "cmd", "id": 7, "cmd": "switch", "model": "qwen3.5", "text": "héllo ✓",
               "nested": {"list": [1, 2.5, None, True]}}
    left.send(message)
    assert right.receive() == [message]
    right.send({"type": "reply", "id": 7, "ok": True})
    assert left.receive() == [{"type": "reply", "id": 7, "ok": True}]


def test_fileno_is_the_socket(ends: tuple[Channel, Channel]) -> None:
    left, _ = ends
    assert left.fileno() == left.sock.fileno()


def test_several_messages_in_one_read(ends: tuple[Channel, Channel]) -> None:
    left, right = ends
    sent = [{"type": "event", "id": 1, "n": n} for n in range(5)]
    left.sock.sendall(b"".join(frame(m) for m in sent))  # all in the buffer before one read
    assert right.receive() == sent


def test_message_split_across_reads(ends: tuple[Channel, Channel]) -> None:
    left, right = ends
    data = frame({"type": "state", "backend": {"state": "ready", "model": "m"}})
    left.sock.sendall(data[:2])  # part of the header
    assert right.receive() == []
    left.sock.sendall(data[2:10])  # rest of the header, part of the payload
    assert right.receive() == []
    left.sock.sendall(data[10:] + frame({"type": "reply", "id": 1})[:3])
    assert right.receive() == [{"type": "state", "backend": {"state": "ready", "model": "m"}}]
    left.sock.sendall(frame({"type": "reply", "id": 1})[3:])
    assert right.receive() == [{"type": "reply", "id": 1}]


def test_peer_close_raises(ends: tuple[Channel, Channel]) -> None:
    left, right = ends
    left.send({"type": "control", "action": "shutdown"})
    left.close()
    assert right.receive() == [{"type": "control", "action": "shutdown"}]
    with pytest.raises(ChannelClosed):
        right.receive()


def test_send_to_closed_peer_raises(ends: tuple[Channel, Channel]) -> None:
    left, right = ends
    right.close()
    with pytest.raises(ChannelClosed):
        left.send({"type": "cmd", "id": 1})


def test_oversized_message_refused_by_sender(ends: tuple[Channel, Channel]) -> None:
    left, right = ends
    with pytest.raises(ValueError, match="exceeds"):
        left.send({"blob": "x" * MAX_MESSAGE})
    left.send({"after": True})  # nothing of the refused message was written
    assert right.receive() == [{"after": True}]


def test_oversized_header_refused_by_receiver(ends: tuple[Channel, Channel]) -> None:
    left, right = ends
    left.sock.sendall(struct.pack("!I", MAX_MESSAGE + 1) + b"{}")
    with pytest.raises(ChannelClosed, match="oversized"):
        right.receive()
