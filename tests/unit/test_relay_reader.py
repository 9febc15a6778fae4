"""The relay's framed reader on a real socket pair with a real http.client response: what
arrived with the head is returned at once, later reads take one recv each, and the body
ends at llama-server's last chunk (the connection stays usable)."""

from __future__ import annotations

import http.client
import socket

from llmctl.daemon.relay.chunked import ChunkFollower
from llmctl.daemon.relay.openai_proxy import Relay, UpstreamConnection

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


def frame(event: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(event), event)


def reader(upstream: socket.socket) -> tuple[Relay, object]:
    """A Relay's framed reader over `upstream` (only the parts the reader uses)."""
    conn = UpstreamConnection("127.0.0.1")
    conn.sock = upstream
    response = http.client.HTTPResponse(upstream, method="POST")
    response.begin()
    relay = Relay.__new__(Relay)
    relay.conn, relay.response, relay.framing_complete = conn, response, False
    return relay, relay._framed_reader(ChunkFollower())


def test_what_came_with_the_head_is_returned_without_waiting() -> None:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)  # a read that waits for more would fail the test, not hang it
    first, second = frame(b"data: one\n\n"), frame(b"data: two\n\n")
    theirs.sendall(HEAD + first)
    relay, read = reader(ours)
    assert bytes(read(65536)) == first  # buffered by http.client with the head
    theirs.sendall(second + b"0\r\n\r\n")
    assert bytes(read(65536)) == second + b"0\r\n\r\n"  # one recv, through the last chunk
    assert relay.framing_complete and read(65536) == b""  # and nothing is read past it
    theirs.sendall(b"next")
    assert ours.recv(16) == b"next"
    ours.close()
    theirs.close()
