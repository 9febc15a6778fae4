"""Forwarding of /v1/* to the active llama-server.

This is the hot path, so it works on the raw WSGI environ (no werkzeug Request) and passes
bytes through untouched: the body is parsed only when routing by model or a model's request
overrides need it (overrides.py), and every chunk llama-server writes is yielded to the client
as soon as it arrives (gevent's pywsgi writes each yielded chunk at once).

Upstream connections are kept alive in a small pool. llama-server may close an idle kept-alive
connection at any time, so a pooled connection is checked before reuse and, if it still fails
before any response byte arrived, the request is sent once more on a fresh connection (the
body was received whole before the request took its lease, bodies.py, so it can be sent
again, from memory or its spool file).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import gevent

from llmctl.daemon.admission.gate import Lease, Unavailable
from llmctl.daemon.api.errors import wsgi_error
from llmctl.daemon.api.hub import Hub
from llmctl.daemon.relay import refusals
from llmctl.daemon.relay.bodies import BodyError, Received, SpooledBody
from llmctl.daemon.relay.chunked import ChunkFollower, FramingError
from llmctl.daemon.relay.model_scan import top_level_model
from llmctl.daemon.relay.overrides import (
    PARSE_LIMIT,
    Overrides,
    json_media,
    json_object,
    requested_model,
    rewrite,
)
from llmctl.daemon.relay.sockio import SocketReader, idle_and_open, send_all

log = logging.getLogger("llmctld.proxy")

HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
))
BUFFERED_BODY = 1024 * 1024  # bodies up to this size stay in memory (larger ones are spooled)
POOL_SIZE = 32
UPSTREAM_TIMEOUT = 3600.0  # one read; long prompts can take minutes before the first byte
# (mid-stream it is checked lazily: a stalled stream ends 1-2 of these after its last byte)
READ_SIZE = 65536
SPARE_CONNECT_TIMEOUT = 5.0  # a backend that does not even accept gets no spare connection
_BROKEN_OFF = (b'data: {"error":{"code":502,"type":"upstream_error","message":'
               b'"llama-server stopped in the middle of the response"}}\n\n')


def upstream_failure(e: BaseException) -> str:
    return (f"llama-server did not answer ({e.__class__.__name__}: {e}); see `llmctl status` "
            "and `llmctl logs`")


class UpstreamConnection(http.client.HTTPConnection):
    """http.client sends the request head and body in separate writes. Small writes go out at
    once (with Nagle's algorithm and delayed ACKs the body waited ~40 ms), and a small body
    goes in the same write as the head, in one send (one syscall, one packet)."""

    def connect(self) -> None:
        try:  # a numeric address (the usual 127.0.0.1) needs no resolver round-trip
            family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 \
                else socket.AF_INET
        except ValueError:
            super().connect()
        else:
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect((self.host, self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if isinstance(message_body, bytes) and len(message_body) <= BUFFERED_BODY:
            buffer = self._buffer  # type: ignore[attr-defined]
            buffer.extend((b"", message_body))
            payload = b"\r\n".join(buffer)
            del buffer[:]
            self.send(payload)
            return
        super()._send_output(message_body, encode_chunked)  # type: ignore[misc]

    def send(self, data: Any) -> None:
        if isinstance(data, (bytes, bytearray)) and self.sock is not None:
            send_all(self.sock, data)  # one syscall, where gevent's sendall makes two
            return
        super().send(data)

    _reader: SocketReader | None = None

    @property
    def reader(self) -> SocketReader:
        """Waits for and reads what llama-server sends (sockio), for as long as the connection
        lives; made at first use, with the socket's timeout by then (a spare connection is
        opened with a short connect timeout, then given the long one)."""
        if self._reader is None:
            self._reader = SocketReader(self.sock)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        super().close()


class UpstreamPool:
    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[UpstreamConnection]] = {}
        self._warming: set[tuple[str, int]] = set()

    def get(self, addr: tuple[str, int]) -> tuple[UpstreamConnection, bool]:
        idle = self._idle.get(addr)
        while idle:
            conn = idle.pop()
            if conn.sock is not None and idle_and_open(conn.sock):
                return conn, True
            conn.close()
        conn = UpstreamConnection(addr[0], addr[1], timeout=UPSTREAM_TIMEOUT,
                                  blocksize=READ_SIZE)  # a spooled body goes in 64 KiB sends
        return conn, False

    def put(self, addr: tuple[str, int], conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(addr, [])
        if len(idle) < POOL_SIZE:
            idle.append(conn)
        else:
            conn.close()

    def warm(self, addr: tuple[str, int]) -> None:
        """Open a connection for the next request now, in the background, unless one is idle
        already: llama-server closes its end after every streamed response, and the next
        request should not wait for a connect (or find the close racing its send). A request
        that comes before the spare is open opens its own; the spare serves a later one."""
        if self._idle.get(addr) or addr in self._warming:
            return
        self._warming.add(addr)
        gevent.spawn(self._open, addr)

    def _open(self, addr: tuple[str, int]) -> None:
        conn = UpstreamConnection(addr[0], addr[1], timeout=SPARE_CONNECT_TIMEOUT)
        try:
            conn.connect()
        except OSError as e:  # the backend went away meanwhile: the next request will say so
            log.debug("opening a spare upstream connection failed: %s", e)
            conn.close()
        else:
            assert conn.sock is not None
            conn.timeout = UPSTREAM_TIMEOUT
            conn.sock.settimeout(UPSTREAM_TIMEOUT)
            self.put(addr, conn)
        finally:
            self._warming.discard(addr)


class OpenAIProxy:
    def __init__(self, hub: Hub):
        self.hub = hub
        self.pool = UpstreamPool()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        reads_body = self.hub.gate.scheduler.reads_bodies()
        try:  # whole, before the lease: a slow upload must not hold the backend (bodies.py)
            received = self.hub.bodies.receive(environ, self.hub.config.limits.max_body,
                                               PARSE_LIMIT if reads_body else BUFFERED_BODY)
        except BodyError as e:
            return refuse_body(start_response, e)
        try:
            return self._admit(environ, start_response, received, reads_body)
        finally:
            received.close()  # sent upstream by now (or refused)

    def _admit(self, environ: dict[str, Any], start_response: Any, received: Received,
               reads_body: bool) -> Iterable[bytes]:
        body = received.body
        parsed = json_object(received.data, environ.get("CONTENT_TYPE")) if reads_body \
            else None
        requested = requested_model(parsed)
        if requested is None and reads_body and self.hub.gate.scheduler.routing:
            requested = _scanned_model(received, environ.get("CONTENT_TYPE"))
        try:
            lease = self.hub.gate.acquire(requested or _query_model(environ))
        except Unavailable as e:
            status, error_headers, payload = wsgi_error(e.status, e.code, e.message, e.type)
            if e.retry_after is not None:
                error_headers.append(("Retry-After", str(e.retry_after)))
            start_response(status, error_headers)
            return [payload]
        with lease:  # released on every way out, unless a Relay takes it over
            entry = self.hub.config.entry(lease.model)
            overrides = Overrides.of(entry.config if entry is not None else None)
            if parsed is not None and overrides is not None:
                body = rewrite(parsed, overrides)
            return self._forward(environ, start_response, body, lease)

    def _forward(self, environ: dict[str, Any], start_response: Any,
                 body: bytes | SpooledBody | None, lease: Lease) -> Iterable[bytes]:
        addr = lease.address
        headers: dict[str, str] = {}
        for name, value in environ.items():
            if name.startswith("HTTP_"):
                header = name[5:].replace("_", "-").lower()
                if header not in HOP_BY_HOP:
                    headers[header] = value
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        path = environ.get("RAW_URI") or environ["PATH_INFO"]
        if "?" not in path and environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        try:
            conn, response = self._send(addr, environ["REQUEST_METHOD"], path, headers, body)
        except (OSError, http.client.HTTPException) as e:
            return self._error(start_response, 502, upstream_failure(e), "upstream_error")
        out_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        length = response.getheader("Content-Length")
        if response.status in refusals.REFUSAL_STATUSES and length is not None and \
                length.isdigit() and int(length) <= refusals.MAX_REFUSAL_BODY:
            return self._error_answer(environ, start_response, lease, conn, response,
                                      out_headers)
        if length is not None:
            out_headers.append(("Content-Length", length))
        start_response(f"{response.status} {response.reason}", out_headers)
        return Relay(self, lease, conn, response, environ["REQUEST_METHOD"])

    def _error_answer(self, environ: dict[str, Any], start_response: Any, lease: Lease,
                      conn: UpstreamConnection, response: http.client.HTTPResponse,
                      headers: list[tuple[str, str]]) -> list[bytes]:
        """A small error answer, read whole: a deterministic refusal (refusals.py) becomes a
        400 in the client's API's shape; any other error goes on as llama-server sent it."""
        try:
            payload = response.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            return self._error(start_response, 502, upstream_failure(e), "upstream_error")
        if response.will_close:
            conn.close()
        else:
            self.pool.put(lease.address, conn)
        entry = self.hub.config.entry(lease.model)
        refusal = refusals.classify(response.status, payload, lease.model,
                                    str(entry.config_file) if entry is not None and
                                    entry.config_file else None)
        if refusal is None:
            start_response(f"{response.status} {response.reason}",
                           [*headers, ("Content-Length", str(len(payload)))])
            return [payload]
        log.info("llama-server refused a request to %s (%s): answering %d",
                 environ["PATH_INFO"], refusal.kind, refusal.status)
        body = refusals.body_for_path(environ["PATH_INFO"], refusal)
        start_response(f"{refusal.status} {http.client.responses[refusal.status]}",
                       [("Content-Type", "application/json"),
                        ("Content-Length", str(len(body)))])
        return [body]

    def open(self, method: str, path: str, body: dict[str, Any] | None, *,
             requested: str | None = None, keep_alive: float | None = None,
             ) -> tuple[Relay, float]:
        """One request of our own to the backend (the Ollama facade's translated ones), under
        the same lease as a /v1 request: admitted by the scheduler (`requested` is the model
        it names), the model's request overrides applied to `body`, in flight until the
        returned Relay is closed. Also returns the seconds it waited for a model load. Raises
        Unavailable, or OSError / HTTPException when llama-server does not answer."""
        waiting = time.monotonic()
        lease = self.hub.gate.acquire(requested)
        waited = time.monotonic() - waiting
        with lease:
            lease.keep_alive = keep_alive
            payload = None
            if body is not None:
                entry = self.hub.config.entry(lease.model)
                overrides = Overrides.of(entry.config if entry is not None else None)
                payload = rewrite(body, overrides) if overrides is not None else \
                    json.dumps(body, separators=(",", ":")).encode()
            headers = {"content-type": "application/json"} if payload is not None else {}
            conn, response = self._send(lease.address, method, path, headers, payload)
            return Relay(self, lease, conn, response), waited

    def _send(self, addr: tuple[str, int], method: str, path: str, headers: dict[str, str],
              body: bytes | SpooledBody | None,
              ) -> tuple[UpstreamConnection, http.client.HTTPResponse]:
        for attempt in (1, 2):
            conn, reused = self.pool.get(addr)
            try:
                if isinstance(body, SpooledBody):
                    body.rewind()  # every body is whole by now, so it can be sent again
                    headers["content-length"] = str(body.length)
                conn.request(method, path, body=body, headers=headers)
                conn.reader.wait()  # the answer is never there yet
                return conn, conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected,
                    http.client.BadStatusLine) as e:
                conn.close()
                if not (reused and attempt == 1):
                    raise
                log.debug("pooled upstream connection was stale (%s); resending once", e)
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _error(self, start_response: Any, status: int, message: str, type_: str,
               code: str | None = None) -> list[bytes]:
        status_line, headers, body = wsgi_error(status, code if code is not None else status,
                                                message, type_)
        start_response(status_line, headers)
        return [body]


def refuse_body(start_response: Any, e: BodyError) -> list[bytes]:
    """A body that cannot be taken, answered at once; the connection closes instead of
    draining what the client still sends."""
    status, error_headers, payload = wsgi_error(e.status, e.code, e.message)
    if e.retry_after is not None:
        error_headers.append(("Retry-After", str(e.retry_after)))
    start_response(status, [*error_headers, ("Connection", "close")])
    return [payload]


def _scanned_model(received: Received, content_type: str | None) -> str | None:
    """The `model` of a JSON body too large to parse (over PARSE_LIMIT, so spooled), found by
    a scan of its top-level keys (model_scan.py), so that routing sees it too."""
    if received.spooled is None or not json_media(content_type):
        return None
    name = top_level_model(received.spooled.view())
    return name.strip() if name is not None and name.strip() else None


def _query_model(environ: dict[str, Any]) -> str | None:
    """`?model=` names the model of a request without a JSON body (as in llama-server's
    router mode)."""
    query = environ.get("QUERY_STRING")
    names = parse_qs(query).get("model") if query and "model=" in query else None
    return names[0] if names else None


class Relay:
    """The WSGI response iterable: relays upstream bytes, and on close() (end of response,
    client disconnect, or error) releases its lease (the in-flight count) and the upstream
    connection.
    Closing an unfinished upstream response disconnects from llama-server, which aborts the
    generation."""

    def __init__(self, proxy: OpenAIProxy, lease: Lease,
                 conn: UpstreamConnection, response: http.client.HTTPResponse,
                 method: str = "GET"):
        self.proxy, self.addr, self.conn, self.response = proxy, lease.address, conn, response
        self.lease = lease
        self.sse = (response.getheader("Content-Type") or "").startswith("text/event-stream")
        self.done = False
        self.released = False
        # A chunked upstream body can go to a chunked client as it is (see pass_framing)
        self.upstream_chunked = bool(response.chunked) and method != "HEAD" \
            and response.status >= 200 and response.status not in (204, 304)
        # Set before iterating, by a server that writes what it is given as it is and answers
        # chunked itself (wsgi_server.Handler): then the iteration yields llama-server's
        # own chunked framing, terminator included, instead of decoded data. framing_complete
        # says whether it got that far (else the client connection must be closed).
        self.pass_framing = False
        self.framing_complete = False
        lease.hand_to(self)

    def __iter__(self) -> Iterator[bytes]:
        framing = ChunkFollower()
        read = self._framed_reader(framing) if self.pass_framing else self.response.read1
        try:
            while True:
                data = read(READ_SIZE)
                if not data:
                    break
                yield data
            self.done = True
        except (OSError, http.client.HTTPException, FramingError) as e:
            log.warning("llama-server broke off a response: %s", e)
            if self.sse:  # tell a streaming client why its stream ends, in llama-server's form
                if not self.pass_framing:
                    yield _BROKEN_OFF
                elif framing.at_boundary:
                    yield b"%x\r\n%s\r\n0\r\n\r\n" % (len(_BROKEN_OFF), _BROKEN_OFF)
                    self.framing_complete = True

    def _framed_reader(self, framing: ChunkFollower) -> Callable[[int], bytes]:
        """read(size): what llama-server has sent by now, framing and all, through its last
        chunk: one recv, so events waiting together go out together and one that is alone
        goes at once. After the first read it reads into one buffer (no allocation per read)
        and returns memoryviews of it: the handler that asked for pass_framing sends each
        one before it asks for the next."""
        fp = self.response.fp
        assert fp is not None
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        recv_into = self.conn.reader.recv_into  # after the first read, fp holds nothing
        first = True

        def read(size: int) -> bytes:
            nonlocal first
            if self.framing_complete:
                return b""
            if first:  # what came in with the head is buffered in fp: take it, all of it
                first = False  # (fp's buffer is smaller than size)
                data: bytes | bytearray = fp.read1(size)
                piece: Any = data  # bytes, or (below) a memoryview of the buffer
                n = len(data)
            else:
                data, n = buffer, recv_into(view)
                piece = view
            if not n:
                raise http.client.IncompleteRead(b"")
            end = framing.feed(data, n)
            if end < 0:
                return piece[:n]
            self.framing_complete = True
            if end < n:  # bytes after the body: the connection is out of step, do not reuse it
                self.response.will_close = True
            return piece[:end]

        return read

    def abort(self) -> None:
        """Disconnect from llama-server now (a forced switch or stop). Shut the socket down
        rather than close it: the greenlet relaying this response is blocked reading it, and
        wakes up to an ended stream, then cleans up in close()."""
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self.released:
            return
        self.released = True
        self.lease.release()
        if self.done and not self.response.will_close and not self.upstream_chunked:
            self.response.close()
            self.proxy.pool.put(self.addr, self.conn)
            return
        self.conn.close()
        if self.done and self.upstream_chunked:
            # llama-server closes the connection after a streamed response without saying
            # so (no Connection: close); reusing it lost a race with that close on about one
            # request in four that followed a stream (each then sent twice)
            self.proxy.pool.warm(self.addr)

