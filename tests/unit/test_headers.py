"""The proxy's header parser gives what http.client's (the email package's) gives: the same
message class, the same (name, value) pairs, the same answers to what pywsgi and http.client
ask of it, on ordinary header blocks and on odd ones (which it hands to the standard parser)."""

from __future__ import annotations

import http.client
import io

import pytest
from gevent import pywsgi

from llmctl.daemon.relay import headers

STANDARD = headers._stdlib_parse_headers

BLOCKS = [
    # llama-server's answers (b11434), streamed and not
    b"HTTP/1.1 200 OK\r\n"[17:] + b"Server: llama.cpp\r\nAccess-Control-Allow-Origin: \r\n"
    b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5, "
    b"max=100\r\n\r\n",
    b"Keep-Alive: timeout=5, max=100\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: 612\r\nServer: llama.cpp\r\n\r\n",
    # what the openai and anthropic SDKs send
    b"Host: 127.0.0.1:16384\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
    b"Accept: application/json\r\nContent-Type: application/json\r\nUser-Agent: OpenAI/Python "
    b"1.99.9\r\nX-Stainless-Lang: python\r\nAuthorization: Bearer sk-local\r\n"
    b"Content-Length: 98\r\n\r\n",
    # edge cases of ordinary fields
    b"X-Empty:\r\nX-Spaces:    padded   \r\nx-lower: a\r\nX-LOWER: b\r\nX-Tab:\tv\r\n\r\n",
    b"X-Latin: caf\xe9\r\nX-Colons: a:b:c\r\nFrom: someone\r\n\r\n",
    b"X-Bare-LF: yes\nX-CR-Inside: a\rb\r\n\n",
    b"\r\n",  # no fields at all
    b"X-No-End: cut off",  # the peer closed before the blank line
    # odd ones: the standard parser decides
    b"X-Folded: first\r\n second line\r\nX-After: 1\r\n\r\n",
    b"Not a field\r\nX-Later: 1\r\n\r\n",
    b"Spaced Name: v\r\nX-Later: 1\r\n\r\n",
    b": no name\r\n\r\n",
    b"From someone Tue Dec  1\r\nX-Later: 1\r\n\r\n",
]


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("cls", [http.client.HTTPMessage, pywsgi.OldMessage])
def test_same_message_as_the_standard_parser(block: bytes, cls: type) -> None:
    ours = headers.parse_headers(io.BytesIO(block), _class=cls)
    theirs = STANDARD(io.BytesIO(block), _class=cls)
    assert type(ours) is type(theirs)
    assert ours.items() == theirs.items()
    for name in ("content-type", "Content-Length", "transfer-encoding", "connection",
                 "x-lower", "X-Folded", "x-missing"):
        assert ours.get(name) == theirs.get(name)
        assert ours.get_all(name) == theirs.get_all(name)
    assert ours.get_payload() == theirs.get_payload()
    if cls is pywsgi.OldMessage:
        assert list(ours.headers) == list(theirs.headers)
        assert ours.typeheader == theirs.typeheader
        assert ours.status == theirs.status


def test_the_limits_stay_http_clients() -> None:
    with pytest.raises(http.client.LineTooLong):
        headers.parse_headers(io.BytesIO(b"X-Long: " + b"a" * 70000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        headers.parse_headers(io.BytesIO(b"X-A: 1\r\n" * 101 + b"\r\n"))


def test_a_response_read_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """http.client's HTTPResponse, once install() put it in place, reads as before."""
    monkeypatch.setattr(http.client, "parse_headers", headers._stdlib_parse_headers)
    headers.install()
    assert http.client.parse_headers is headers.parse_headers

    class Sock:
        def __init__(self, data: bytes):
            self.data = data

        def makefile(self, mode: str) -> io.BytesIO:
            return io.BytesIO(self.data)

    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
             b"Server: llama.cpp\r\n\r\n{}")
    response = http.client.HTTPResponse(Sock(reply))  # type: ignore[arg-type]
    response.begin()
    assert response.status == 200 and response.getheader("content-length") == "2"
    assert response.getheaders() == [("Content-Type", "application/json"),
                                     ("Content-Length", "2"), ("Server", "llama.cpp")]
    assert response.read() == b"{}" and not response.will_close
