"""The proxy worker process: gevent's WSGI server on the socket inherited from the supervisor.

Order matters (as in gunicorn's gevent worker): monkey-patch first, in the child only, then
re-wrap the inherited listening socket and channel as gevent sockets, then serve, and tell the
supervisor it is ready (a graceful restart retires the old worker only then). Either way it
stops accepting (the supervisor's copy of the socket keeps the port open, so new connections
go to the successor) and answers every request still reaching it with `Connection: close`.

- SIGUSR2, retire (a graceful restart): wait for every connection, so kept-alive clients move
  to the successor one by one. Closing an idle kept-alive connection ourselves would race
  with a client sending on it; only connections silent for DRAIN_SECONDS are dropped.
- SIGTERM, shut down: wait only for requests in progress (DRAIN_SECONDS at most), then go.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from llmctl.core.config import GlobalConfig
from llmctl.core.paths import Paths

DRAIN_SECONDS = 10.0
log = logging.getLogger("llmctld.proxy")


def run(listener: socket.socket, sock: socket.socket, paths: Paths,
        daemon_info: dict[str, Any], config: GlobalConfig) -> int:
    monkey_patch()
    import gevent
    import gevent.event
    import gevent.pool

    from llmctl.daemon.api.app import App
    from llmctl.daemon.api.hub import Hub
    from llmctl.daemon.ipc import protocol as p
    from llmctl.daemon.ipc.channel import Channel, ChannelClosed
    from llmctl.daemon.observe.observer import install as observe
    from llmctl.daemon.relay import headers

    headers.install()  # the request's and llama-server's header blocks, parsed faster
    server_sock = socket.socket(listener.family, listener.type, fileno=listener.detach())
    channel = Channel(socket.socket(sock.family, sock.type, fileno=sock.detach()))
    hub = Hub(channel, paths, daemon_info, config)
    # a Pool, unbounded: without one, server.stop() does not wait for requests in progress
    app = observe(App(hub), hub, paths.runtime, hub.config.config.data["observability"])
    server = _server_class()(server_sock, app, handler_class=_handler_class(),
                             spawn=gevent.pool.Pool(), log=None, error_log=_ErrorLog())
    hub.start()
    stopped = gevent.event.Event()

    def retire() -> None:
        if not server.closed:
            server.stop(timeout=DRAIN_SECONDS)  # stop accepting, wait for every connection
            stopped.set()

    def stop() -> None:
        if server.closed and stopped.is_set():
            return
        server.close()
        deadline = time.monotonic() + DRAIN_SECONDS
        while server.busy and time.monotonic() < deadline:
            gevent.sleep(0.02)
        server.stop(timeout=0)  # what is left is idle: drop it
        stopped.set()

    def stop_when_orphaned() -> None:
        hub.closed.wait()
        stop()

    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(stop))
    gevent.signal_handler(signal.SIGUSR2, lambda: gevent.spawn(retire))
    gevent.spawn(stop_when_orphaned)
    server.start()
    try:
        channel.post(p.Ready(os.getpid()))
    except ChannelClosed:
        stop()
    stopped.wait()
    if hasattr(app, "flush"):  # the observer: write the metrics still in memory
        app.flush()
    return 0


def monkey_patch() -> None:
    """gevent's monkey.patch_all(), with one look at the installed packages' entry points.

    patch_all announces each step to gevent plugins, and every announcement asks
    importlib.metadata for the entry points of its group, which reads the metadata of every
    installed distribution again: ~25 scans, most of patch_all's time and a good part of a
    proxy worker's start (a restart is a gap in service). The packages do not change in
    between, so the scan is done once and each group is selected from it."""
    from importlib import metadata

    from gevent import monkey

    every = metadata.entry_points()
    scan = metadata.entry_points

    def selected(**params: Any) -> Any:
        return every.select(**params) if params else every

    metadata.entry_points = selected
    try:
        monkey.patch_all()
    finally:
        metadata.entry_points = scan


def _server_class() -> type:
    from gevent import pywsgi

    class Server(pywsgi.WSGIServer):
        busy = 0  # requests being answered (connections between requests are not counted)

        def handle(self, sock: socket.socket, address: Any) -> None:
            # each SSE chunk is its own small write: send it now, not after the client's
            # delayed ACK of the previous one
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    return Server


def _handler_class() -> type:
    from gevent.pywsgi import WSGIHandler

    from llmctl.daemon.relay.sockio import send_all

    class Handler(WSGIHandler):
        """Adds the raw request target (PATH_INFO is unquoted) and the client socket, and
        counts the requests being answered for the shutdown drain."""

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

    return Handler


class _ErrorLog:
    """pywsgi's error log, sent to the daemon's logger instead of raw stderr."""

    def write(self, data: str) -> None:
        data = data.strip()
        if data:
            log.error("%s", data)

    def flush(self) -> None:
        sys.stderr.flush()
