"""backend.process.health: llama-server's /health status over a plain socket, and what the
lifecycle worker does not load for it."""

from __future__ import annotations

import socket
import threading

from llmctl.daemon.backend.process import health


def serve_once(reply: bytes) -> tuple[int, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                request = conn.recv(4096)
                assert request.startswith(b"GET /health HTTP/1.1\r\n")
                conn.sendall(reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return port, thread


def test_status_of_an_answer() -> None:
    for reply, status in ((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 200),
                          (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", 503)):
        port, thread = serve_once(reply)
        assert health("127.0.0.1", port) == status
        thread.join(5)


def test_nothing_listening_or_not_http_is_none() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert health("127.0.0.1", free, timeout=0.5) is None
    port, thread = serve_once(b"SSH-2.0-OpenSSH\r\n")
    assert health("127.0.0.1", port) is None
    thread.join(5)
