"""The streaming relay: llama-server's chunked framing goes to a chunked client as it is
(openai_proxy.Relay with wsgi_server.Handler), and is decoded for a client that cannot take
it (HTTP/1.0). Real llama-server where the behaviour is ordinary; the scripted fake for floods
and breaks."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from pathlib import Path

import openai
import pytest
import requests

from harness import Daemon, Home


def raw_request(daemon: Daemon, body: dict, version: str = "HTTP/1.1") -> tuple[bytes, bytes]:
    """POST /v1/chat/completions on a plain socket, read until the daemon closes: the head and
    the raw body bytes (framing included)."""
    payload = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions {version}\r\nHost: 127.0.0.1:{daemon.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as s:
        s.sendall(head + payload)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    return head_bytes, rest


def dechunk(body: bytes) -> bytes:
    """Decode a complete chunked body; fails (AssertionError) if it is cut short or a size is
    not plain hex digits (int(x, 16) would take 0x1a, +1a, 1_0 and ' 1a')."""
    out, pos = b"", 0
    while True:
        eol = body.index(b"\r\n", pos)
        size_line = body[pos:eol].split(b";", 1)[0]
        assert re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_line), f"size line {size_line!r}"
        size = int(size_line, 16)
        pos = eol + 2
        if size == 0:
            assert body[pos:pos + 2] == b"\r\n", "no end of the chunked body"
            return out
        out += body[pos:pos + size]
        assert body[pos + size:pos + size + 2] == b"\r\n"
        pos += size + 2


def events(text: bytes) -> list[bytes]:
    return [e for e in text.split(b"\n\n") if e.strip()]


def test_real_stream_keeps_framing_and_connection(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    body = {"model": "local", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 40, "ignore_eos": True, "stream": True}
    head, raw = raw_request(daemon, body)
    assert b"transfer-encoding: chunked" in head.lower()
    stream = events(dechunk(raw))  # a complete chunked body, terminator included
    assert stream[-1] == b"data: [DONE]"
    assert all(json.loads(e[6:]) for e in stream[:-1])
    # the kept-alive client connection goes on to the next request, streamed or not
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="none", max_retries=0)
    for _ in range(3):
        pieces = [c for c in client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
            stream=True)]
        assert pieces and pieces[-1].choices[0].finish_reason is not None
        reply = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert reply.choices[0].message is not None


def test_requests_after_streams_are_sent_once(real_home: Home, make_daemon) -> None:
    """llama-server closes its end after a streamed response without saying so: reusing
    that connection made about half of the requests after a stream fail and go again on a
    fresh one. The connection is not pooled any more; a spare is opened instead."""
    daemon = make_daemon("--log-level", "debug")
    assert daemon.switch("tiny-alpha").status_code == 200
    body = json.dumps({"model": "local", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 4, "stream": True})
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    for _ in range(40):  # back to back on one connection: the next request follows at once
        conn.request("POST", "/v1/chat/completions", body,
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and response.read().endswith(b"data: [DONE]\n\n")
    conn.close()
    assert "upstream connection was stale" not in daemon.log.read_text()  # logged at debug


def test_http10_client_gets_the_stream_decoded(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    body = {"model": "local", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20, "ignore_eos": True, "stream": True}
    head, raw = raw_request(daemon, body, "HTTP/1.0")
    assert b"chunked" not in head.lower()
    stream = events(raw)  # plain SSE until the close: no chunk-size lines in it
    assert stream[0].startswith(b"data: {") and stream[-1] == b"data: [DONE]"


def test_a_flood_of_events_arrives_whole(fake_home: Home, make_daemon) -> None:
    """Events that wait together upstream go out together: none lost, split or merged."""
    fake_home.add_model("flood", script={"chunk_interval": 0, "stream_chunks": 3000})
    daemon = make_daemon()
    assert daemon.switch("flood").status_code == 200
    r = daemon.post("/v1/chat/completions", stream=True, json={
        "model": "local", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "max_tokens": 3000})
    lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    deltas = [json.loads(line[6:]) for line in lines[:-1]]
    assert len(deltas) >= 3000
    assert daemon.status()["in_flight"] == 0


def test_error_mid_stream_is_a_complete_chunked_body(fake_home: Home, make_daemon,
                                                     tmp_path: Path) -> None:
    fake_home.add_model("crashy", script={"crash_after_chunks": 3, "chunk_interval": 0.02})
    daemon = make_daemon()
    assert daemon.switch("crashy").status_code == 200
    head, raw = raw_request(daemon, {"model": "local", "stream": True, "max_tokens": 50,
                                     "messages": [{"role": "user", "content": "hi"}]})
    stream = events(dechunk(raw))  # the client is told why, in valid framing
    assert b'"upstream_error"' in stream[-1]
    assert b"[DONE]" not in b"".join(stream)
    assert requests.get(daemon.url + "/health", timeout=10).status_code == 200


def test_an_event_alone_is_not_held_back(fake_home: Home, make_daemon) -> None:
    """Nothing waits for the next event (which comes 1.5 s later) before sending one.
    (The head-and-first-event-in-one-read case: tests/unit/test_relay_reader.py.)"""
    fake_home.add_model("slow", script={"chunk_interval": 1.5, "stream_chunks": 2})
    daemon = make_daemon()
    assert daemon.switch("slow").status_code == 200
    sent = time.monotonic()
    r = daemon.post("/v1/chat/completions", stream=True, json={
        "model": "local", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    arrivals = [time.monotonic() - sent for line in r.iter_lines() if line]
    assert len(arrivals) >= 3
    assert arrivals[0] < 1.0 < 1.4 < arrivals[-1]  # the first came at once, not with the rest


@pytest.mark.parametrize("size_format", ["0x%x", "+%x"])
def test_upstream_framing_that_is_not_hex_is_not_passed_on(fake_home: Home, make_daemon,
                                                           size_format: str) -> None:
    """A chunk size Python's int(x, 16) would take but HTTP does not: the relay stops there
    and tells the client why, in valid framing, instead of forwarding bytes whose framing a
    client may read differently."""
    fake_home.add_model("odd", script={"chunk_size_format": size_format, "stream_chunks": 3})
    daemon = make_daemon()
    assert daemon.switch("odd").status_code == 200
    head, raw = raw_request(daemon, {"model": "local", "stream": True, "max_tokens": 3,
                                     "messages": [{"role": "user", "content": "hi"}]})
    assert b" 200 " in head.split(b"\r\n", 1)[0]
    stream = events(dechunk(raw))
    assert b'"upstream_error"' in stream[-1]
    assert b"[DONE]" not in b"".join(stream)
    assert "bad chunk-size line" in daemon.log.read_text()
    assert daemon.status()["in_flight"] == 0


@pytest.mark.parametrize("size", [b"0x1a", b"1_0", b"+1a", b" 1a"])
def test_a_client_body_with_a_non_hex_chunk_size_gets_400(fake_home: Home, make_daemon,
                                                         size: bytes) -> None:
    fake_home.add_model("m", script={"record_requests": str(fake_home.root / "seen.jsonl")})
    daemon = make_daemon()
    assert daemon.switch("m").status_code == 200
    payload = b'{"model":"local","messages":[{"role":"user","content":"hi"}]}'
    payload = payload.ljust(26)  # what 0x1a (and +1a, ' 1a') would claim
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n").encode()
    body = size + b"\r\n" + payload[:int(size, 16)] + b"\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]
    answer = json.loads(data.partition(b"\r\n\r\n")[2])
    assert answer["error"]["code"] == "bad_request_body", answer
    assert "hex digits only" in answer["error"]["message"]
    assert not (fake_home.root / "seen.jsonl").exists()  # nothing reached llama-server
    assert daemon.get("/health").status_code == 200
