"""Clients that hold resources: deadlines for a request's head, kept-alive idle connections, a
bounded number of connections (a clear 503 past it) — and none of it cuts a stream that is
making progress, however slow its reader."""

from __future__ import annotations

import json
import select
import socket
import time

from harness import Home, wait_for


def _closed(s: socket.socket) -> bool:
    """True once the daemon closed this connection (EOF or a reset), without blocking."""
    readable, _, _ = select.select([s], [], [], 0)
    if not readable:
        return False
    try:
        while data := s.recv(65536):
            if not select.select([s], [], [], 0)[0]:
                return False  # an answer (e.g. 408), the close may follow
            del data
        return True
    except OSError:
        return True


def _answer(s: socket.socket, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_half_request_lines_are_closed_within_the_header_timeout(fake_home: Home,
                                                                 make_daemon) -> None:
    fake_home.write_config(daemon={"header_timeout": "1s"})
    daemon = make_daemon()
    slow = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(50)]
    try:
        started = time.monotonic()
        for s in slow:
            s.sendall(b"GET /health HT")  # half a request line, then nothing
        wait_for(lambda: all(_closed(s) for s in slow), 30,
                 "the daemon to close 50 connections that sent half a request line",
                 daemon.log)
        took = time.monotonic() - started
        assert took >= 0.9, f"closed after {took:.2f}s, before the 1 s header_timeout"
        assert daemon.get("/health", timeout=5).ok  # and the daemon serves on
    finally:
        for s in slow:
            s.close()


def test_headers_trickled_past_the_deadline_get_a_408(fake_home: Home, make_daemon) -> None:
    fake_home.write_config(daemon={"header_timeout": "1s"})
    daemon = make_daemon()
    with socket.create_connection(("127.0.0.1", daemon.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        answer = b""
        for _ in range(40):  # a header line every 0.1 s: each read is quick, the head never ends
            s.sendall(b"X-Slow: 1\r\n")
            if select.select([s], [], [], 0.1)[0]:
                answer = _answer(s)
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"daemon.header_timeout" in answer
        assert time.monotonic() - started < 3.5


def test_an_idle_kept_alive_connection_is_closed(fake_home: Home, make_daemon) -> None:
    fake_home.write_config(daemon={"keepalive_timeout": "1s"})
    daemon = make_daemon()
    with socket.create_connection(("127.0.0.1", daemon.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        wait_for(lambda: _closed(s), 15, "the idle kept-alive connection to be closed",
                 daemon.log)
        assert time.monotonic() - started >= 0.9


def test_past_max_connections_a_new_one_gets_503_and_open_streams_go_on(
        fake_home: Home, make_daemon) -> None:
    # The fake server: a stream that lasts several header and keep-alive timeouts, at a pace
    # the test sets (a real tiny model's stream is over before the first deadline).
    fake_home.add_model("m", script={"stream_chunks": 12, "chunk_interval": 0.25})
    fake_home.write_config(daemon={"max_connections": 4, "header_timeout": "1s",
                                   "keepalive_timeout": "1s", "default_model": "m"},
                           llama={"parallel": 4})  # the four streams at once
    daemon = make_daemon()
    daemon.session.close()  # its kept-alive connection would be one of the four
    body = json.dumps({"model": "m", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))
    streams: list[socket.socket] = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", daemon.port))
            streams.append(s)
            s.sendall(request)
            s.settimeout(30)  # the first one loads the default model
            assert s.recv(4096).startswith(b"HTTP/1.1 200")  # streaming has begun
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = _answer(extra)
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer[:300]
        assert b"Retry-After: 1" in head
        error = json.loads(payload)["error"]
        assert error["code"] == "too_many_connections"
        assert "daemon.max_connections" in error["message"]
        # the four streams outlive the header and keep-alive timeouts; one is read slowly
        slow_reader = streams[0]
        texts = []
        for s in streams:
            if s is slow_reader:
                continue
            texts.append(_answer(s, 20))
        pieces = []  # (the slow reader's stream waited in its socket meanwhile)
        slow_reader.settimeout(20)
        while chunk := slow_reader.recv(64):  # small reads, one at a time
            pieces.append(chunk)
        texts.append(b"".join(pieces))
        for text in texts:
            assert text.count(b"data: {") >= 12 and b"[DONE]" in text, text[-300:]
        assert daemon.get("/health", timeout=5).ok  # room again
    finally:
        for s in streams:
            s.close()
