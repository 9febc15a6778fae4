"""Request bodies: received whole before a request takes its lease, within a deadline per
piece, and capped however they are framed (Content-Length or chunked), on every route."""

from __future__ import annotations

import fcntl
import json
import select
import socket
import termios
import time

import psutil

from harness import Daemon, Home, wait_for

MIB = 1024 * 1024


def _unsent(s: socket.socket) -> int:
    """Bytes of ours the daemon has not taken yet (in our send queue)."""
    return int.from_bytes(fcntl.ioctl(s, termios.TIOCOUTQ, b"\0\0\0\0"), "little")


def _answer(s: socket.socket, timeout: float = 15) -> bytes:
    s.settimeout(timeout)
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _start_upload(daemon: Daemon, path: str, length: int, sent: int) -> socket.socket:
    """A POST whose body of `length` bytes stops after `sent` bytes (then nothing)."""
    s = socket.create_connection(("127.0.0.1", daemon.port))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              f"Content-Length: {length}\r\n\r\n".encode())
    s.sendall(b'{"messages": [{"role": "user", "content": "' + b"a" * (sent - 43))
    wait_for(lambda: _unsent(s) == 0, 30, "the daemon to take the upload's first bytes",
             daemon.log)
    return s


def test_a_slow_upload_holds_no_lease(real_home: Home, make_daemon) -> None:
    real_home.write_config(daemon={"body_timeout": "2s"})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").ok
    upload = _start_upload(daemon, "/v1/chat/completions", 3 * MIB, 2 * MIB)
    try:
        assert daemon.status()["in_flight"] == 0  # receiving a body is not being in flight
        stopped = daemon.post("/stop", timeout=10)  # so a stop (or switch) is not refused
        assert stopped.status_code == 200, stopped.text
        started = time.monotonic()
        answer = _answer(upload)  # the stalled body is answered, within the deadline
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"daemon.body_timeout" in answer
        assert time.monotonic() - started < 10
    finally:
        upload.close()
    assert daemon.status()["in_flight"] == 0


def test_a_large_upload_is_received_whole_then_served(real_home: Home, make_daemon) -> None:
    """A body over 1 MiB (spooled to disk) still reaches llama-server whole: its messages come
    after 3 MiB of padding (which llama-server ignores), so a cut body would be refused."""
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").ok
    body = ('{"padding": "' + "x" * (3 * MIB) + '", "max_tokens": 2, '
            '"messages": [{"role": "user", "content": "hi"}]}').encode()
    for chunked in (False, True):
        data = iter([body[i:i + MIB] for i in range(0, len(body), MIB)]) if chunked else body
        r = daemon.post("/v1/chat/completions", data=data, timeout=120,
                        headers={"Content-Type": "application/json"})
        assert r.ok, r.text[:300]
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
    assert not list((real_home.runtime / "spool").iterdir())  # the spool files are gone


def _chunked_flood(daemon: Daemon, path: str, total: int) -> tuple[bytes, int]:
    """POST `path` with a chunked body of up to `total` bytes; the daemon's answer and how
    many body bytes went out before it came (or the daemon closed)."""
    s = socket.create_connection(("127.0.0.1", daemon.port))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              "Transfer-Encoding: chunked\r\n\r\n".encode())
    piece = b'{"repo": "' + b"x" * 65000
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    sent = 0
    try:
        while sent < total:
            if select.select([s], [], [], 0)[0]:
                break  # an answer (or the close) before the body ended
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        else:
            s.sendall(b"0\r\n\r\n")
        return _answer(s), sent
    finally:
        s.close()


def _proxy(daemon: Daemon) -> psutil.Process:
    return psutil.Process(daemon.workers()["proxy"])


def test_a_chunked_control_body_is_capped(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("m")
    daemon = make_daemon()
    rss = _proxy(daemon).memory_info().rss
    for path in ("/pull", "/models/load", "/switch/m"):
        answer, sent = _chunked_flood(daemon, path, 64 * MIB)
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:300])
        assert b"65536 bytes" in answer
        assert sent < 16 * MIB, f"{path}: {sent} bytes went in before the 413"
    assert _proxy(daemon).memory_info().rss < rss + 32 * MIB
    assert daemon.backend()["state"] == "stopped"  # nothing was switched
    assert daemon.get("/health").ok


def test_v1_and_api_bodies_are_capped_however_framed(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("m")
    fake_home.write_config(daemon={"max_body": 2, "default_model": "m"})
    daemon = make_daemon()
    for path in ("/v1/chat/completions", "/completion", "/api/chat"):
        answer, sent = _chunked_flood(daemon, path, 64 * MIB)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), (path, answer[:300])
        error = json.loads(body)["error"]
        message = error if path.startswith("/api/") else error["message"]  # Ollama's shape
        assert "2 MiB" in message and "daemon.max_body" in message, message
        assert sent < 16 * MIB, f"{path}: {sent} bytes went in before the 413"
    r = daemon.post("/v1/chat/completions", data=b"x" * (3 * MIB),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "daemon.max_body" in r.json()["error"]["message"]
    assert daemon.backend()["state"] == "stopped"  # none of them loaded the model


def test_large_bodies_at_once_are_bounded(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("m")
    fake_home.write_config(daemon={"max_large_bodies": 1, "default_model": "m"})
    daemon = make_daemon()
    assert daemon.switch("m").ok
    upload = _start_upload(daemon, "/v1/chat/completions", 4 * MIB, 2 * MIB)
    try:
        r = daemon.post("/v1/chat/completions", data=b"y" * (2 * MIB),
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert "daemon.max_large_bodies" in r.json()["error"]["message"]
        r = daemon.post("/v1/chat/completions", json={  # small bodies are not counted
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.ok, r.text
    finally:
        upload.close()

    def large_post() -> int | None:
        r = daemon.post("/v1/chat/completions", data=b"y" * (2 * MIB),
                        headers={"Content-Type": "application/json"})
        return None if r.status_code == 503 else r.status_code

    status = wait_for(large_post, 15, "the large-body slot to be given back", daemon.log)
    assert status == 400  # the fake's answer to a body without messages: it got through


def test_routing_finds_the_model_of_a_body_too_large_to_parse(real_home: Home,
                                                              make_daemon) -> None:
    """Over the 8 MiB parse limit the body is spooled, and its top-level `model` is found by
    a scan: a large base64 image goes to the model it names, not to the current one."""
    real_home.write_config(daemon={"route_by_model": True})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").ok
    image = "data:image/png;base64," + "QUJD" * (3 * MIB)  # 12 MiB of base64
    body = ('{"metadata": {"model": "tiny-alpha", "image": "' + image + '"}, '  # nested: not it
            '"messages": [{"role": "user", "content": "hi \\"model\\": tiny-alpha"}], '
            '"max_tokens": 2,\n  "model" : "tiny-beta"}').encode()
    assert len(body) > 8 * MIB
    r = daemon.post("/v1/chat/completions", data=body, timeout=120,
                    headers={"Content-Type": "application/json"})
    assert r.ok, r.text[:300]
    assert daemon.backend()["model"] == "tiny-beta"
