"""The proxy worker's HTTP server: gevent's pywsgi, with the few changes llmctld needs.

Imported only by the proxy worker, after gevent's monkey-patching (proxy_worker.py): it
imports gevent at the top, and the supervisor must never import gevent.

- each SSE chunk is its own small write, sent at once (TCP_NODELAY), with the response head
  and a small first chunk in one write;
- a chunked answer from llama-server goes to a chunked client as it is (the relay's
  `pass_framing`): no decode, re-encode or copy;
- `busy` counts requests being answered, for the shutdown drain; a draining server answers
  with `Connection: close`;
- the raw request target and the client socket are in the environ (RAW_URI, llmctl.socket);
- client deadlines (admission/client_limits.py): a request's line and headers must arrive within
  `header_timeout` of its first byte (a new connection's first byte too), a kept-alive
  connection idle for `keepalive_timeout` is closed, and past `max_connections` open
  connections a new one is answered 503 (JSON, Retry-After) and closed. Nothing times out once
  a request is being answered: a long stream, or a slow reader of one, is never cut;
- no access log (the observer records each exchange); errors go to the daemon's logger;
- a request pywsgi refuses to read (a chunked body whose sizes are not plain hex, ...) gets a
  JSON 400 that says why, like every other error, not an empty text/plain one.

pywsgi internals overridden here are checked by tests/unit/test_pinned_internals.py.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import pywsgi
from gevent.pywsgi import WSGIHandler

from llmctl.daemon.admission.client_limits import ClientLimits
from llmctl.daemon.api.errors import error_body, wsgi_error
from llmctl.daemon.relay.sockio import send_all

log = logging.getLogger("llmctld.proxy")

REFUSAL_LINGER = 1.0  # seconds a refused connection is read from before it is closed
RETRY_AFTER = 1


class HeadTimeout(TimeoutError):
    """A request's line and headers did not arrive within daemon.header_timeout. A
    TimeoutError (so an OSError): pywsgi ends the connection on it while it reads the
    request line, and hands it to _handle_client_error while it reads the headers."""


class Server(pywsgi.WSGIServer):
    busy = 0  # requests being answered (connections between requests are not counted)
    connections = 0  # client connections open (each has its greenlet)
    refused = 0  # connections answered 503 because max_connections were open
    limits: Callable[[], ClientLimits] = ClientLimits  # the proxy worker's: the config's

    def handle(self, sock: socket.socket, address: Any) -> None:
        if self.connections >= self.limits().max_connections:
            self.refused += 1
            _refuse(sock, self.connections)
            return
        self.connections += 1
        try:
            # each SSE chunk is its own small write: send it now, not after the client's
            # delayed ACK of the previous one
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)
        finally:
            self.connections -= 1


def _refuse(sock: socket.socket, open_now: int) -> None:
    """503 for a connection over daemon.max_connections, then close it. What the client sent
    meanwhile is read (for at most REFUSAL_LINGER): closing on unread bytes would reset the
    connection and could discard the answer before the client reads it."""
    body = error_body(503, "too_many_connections", (
        f"llmctld has {open_now} client connections open, its limit (daemon.max_connections); "
        f"retry in a moment, or raise daemon.max_connections"))
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER}\r\n"
            "Connection: close\r\n\r\n").encode()
    try:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + REFUSAL_LINGER
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    except OSError:
        pass
    finally:
        sock.close()


_TIMEOUT_BODY = error_body(408, "request_timeout", "the request's line and headers did not "
                          "arrive within daemon.header_timeout", "timeout_error")
_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


class Handler(WSGIHandler):
    """Adds the raw request target (PATH_INFO is unquoted) and the client socket, counts
    the requests being answered for the shutdown drain, and keeps the client deadlines."""

    _head_timer: gevent.Timeout | None = None
    _requests = 0  # requests read on this connection

    def read_requestline(self) -> str:
        """Wait for the next request's first byte (a kept-alive connection for at most
        keepalive_timeout, a new one for header_timeout: silence closes it), then give the
        line and the headers header_timeout together (get_environ ends that deadline)."""
        limits = self.server.limits()
        idle = limits.keepalive_timeout if self._requests else limits.header_timeout
        self._requests += 1
        started = False
        with gevent.Timeout(idle, False):
            started = bool(self.rfile.peek(1))
        if not started:
            return ""  # idle (or closed): end the connection quietly
        self._head_timer = gevent.Timeout.start_new(limits.header_timeout, HeadTimeout(
            "request head not complete within daemon.header_timeout"))
        line: str = super().read_requestline()
        return line

    def handle_one_request(self) -> Any:
        try:
            return super().handle_one_request()
        finally:
            self._end_head_timer()

    def _end_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def handle_one_response(self) -> None:
        self.server.busy += 1
        try:
            super().handle_one_response()
        finally:
            self.server.busy -= 1

    def _write_with_headers(self, data: bytes) -> None:
        """The head and a small first chunk in one write (pywsgi makes two syscalls)."""
        if len(data) > 65536:
            super()._write_with_headers(data)
            return
        out = self._head()
        if data and self.response_use_chunked:
            out += b"%x\r\n" % len(data) + data + b"\r\n"
        else:
            out += data
        self._sendall(out)

    def _handle_client_error(self, ex: BaseException) -> Any:
        """pywsgi calls this (it logs) for a request it refused to read: the head past its
        deadline (HeadTimeout: a 408), or a chunked body whose framing is not HTTP's (kept
        for the answer below)."""
        if isinstance(ex, HeadTimeout):
            return ("408", _REQUEST_TIMEOUT)
        self.client_error = ex
        return super()._handle_client_error(ex)

    def _send_error_response_if_possible(self, error_code: int) -> None:
        """pywsgi's own 400/500 answer is an empty text/plain body (a str, which the head
        write above cannot take); the client gets a JSON error that says what was wrong, as
        from every other route, and the connection closes (the body's end is unknown)."""
        if self.response_length or self.headers_sent:
            self.close_connection = True
            return
        problem = getattr(self, "client_error", None)
        if error_code == 400:
            reason = " ".join(str(a) for a in getattr(problem, "args", ())) or "malformed"
            message = (f"the request body could not be read: {reason}. A chunked body needs "
                       "chunk sizes in hex digits only (optionally ;extensions), each line "
                       "and each chunk's data ending in CRLF")
            status, headers, body = wsgi_error(400, "bad_request_body", message,
                                               "invalid_request_error")
        else:
            status, headers, body = wsgi_error(error_code, error_code, "internal error; see "
                                               "the daemon log", "server_error")
        self.close_connection = True
        try:
            self.start_response(status, [*headers, ("Connection", "close")])
            self.write(body)
        except OSError:
            pass

    def log_request(self) -> None:
        """No access log (the server is made with log=None; the observer records each
        exchange): pywsgi would still format a line per request to throw it away."""

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        """pywsgi's, with one plain send first (gevent's sendall asks the kernel for the
        send buffer's size before every write; the client's buffer is seldom full). A
        failed send raises as in pywsgi's; what that one also notes is for its access
        log, which this server does not keep."""
        send_all(self.socket, data)
        self.response_length += len(data)

    def _head(self) -> bytearray:
        self.headers_sent = True
        self.finalize_headers()
        out = bytearray(b"HTTP/1.1 ")
        out += self.status
        out += b"\r\n"
        for header, value in self.response_headers:
            out += header + b": " + value + b"\r\n"
        out += b"\r\n"
        return out

    def process_result(self) -> None:
        """A chunked answer from llama-server goes to a chunked client as it is: each
        read of the upstream socket is one write to the client, framing included (no
        decode, re-encode, or copy). The head goes with the first bytes, as above."""
        relay = self.result
        if not getattr(relay, "upstream_chunked", False):
            super().process_result()
            return
        head: bytearray | None = self._head()  # decides whether we answer chunked
        relay.pass_framing = self.response_use_chunked
        sendall = self._sendall
        for data in relay:
            if head is not None:
                head += data
                data, head = head, None
            sendall(data)
        if head is not None:
            self._sendall(head)
        if self.response_use_chunked and not relay.framing_complete:
            self.close_connection = True  # cut off mid-chunk: the client must see it end

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        if self.server.closed:  # draining: this is the connection's last answer
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def get_environ(self) -> dict[str, Any]:
        self._end_head_timer()  # the head is in: from here on nothing has a deadline
        env = super().get_environ()
        env["RAW_URI"] = self.path
        env["llmctl.socket"] = self.socket
        return env

    def run_application(self) -> None:
        super().run_application()
        if self.close_connection and self.wsgi_input is not None:
            # We answered without reading the body (e.g. 413) and close the connection:
            # don't let pywsgi read and discard gigabytes first. This is the flag its
            # Input uses for "state unknown, the socket will be closed".
            self.wsgi_input._chunked_input_error = True


class ErrorLog:
    """pywsgi's error log, sent to the daemon's logger instead of raw stderr."""

    def write(self, data: str) -> None:
        data = data.strip()
        if data:
            log.error("%s", data)

    def flush(self) -> None:
        sys.stderr.flush()
