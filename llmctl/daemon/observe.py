"""What the proxy worker sees of each proxied request, for the metrics and the activity log.

`Observer` is WSGI middleware around the App. For the routes that reach llama-server (the
route families `v1`, `native`, `api`; control routes pass through untouched) it notes the
arrival time, the status and content type from start_response, and the time of the first
body chunk. The response bytes go through unchanged and are not copied or held: the observer
keeps references to the last TAIL_CHUNKS chunks only (llama-server puts `usage` and `timings`
at the very end), so a stream of any length costs the same few kilobytes. The rest happens
in close(), after the server has written the response's last byte: reading the token figures
(usage.py) and recording the request.

Observation must never break a response: a failure in the accounting is logged once and
swallowed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from llmctl.daemon import usage
from llmctl.daemon.native_routes import backend_path

log = logging.getLogger("llmctld.proxy")

TAIL_CHUNKS = 4  # SSE: the finish event with `timings`, the `usage` event, `[DONE]`, slack
TAIL_BYTES = 16 * 1024  # of those chunks, at most this much is searched

TEXT_TYPES = ("application/json", "text/event-stream", "application/x-ndjson")


def route_family(path: str) -> str | None:
    """`v1`, `native` or `api` for the routes that reach a model; None for control routes."""
    if path.startswith("/v1/"):
        return None if path == "/v1/models" else "v1"
    if path.startswith("/api/"):
        return "api"
    if backend_path(path) is not None:  # llama-server's own routes, /backend/<path>
        return "native"
    return None


def client_kind(address: str | None) -> str:
    """`loopback` or `lan`, from the client's address (string tests: this runs per request)."""
    if address and (address.startswith("127.") or address in ("::1", "localhost")
                    or address.startswith("::ffff:127.")):
        return "loopback"
    return "lan"


class Observer:
    def __init__(self, app: Any, hub: Any, metrics: Any | None, activity: Any | None):
        self.app, self.hub, self.metrics, self.activity = app, hub, metrics, activity
        self._failed = False
        if metrics is not None:
            hub.listeners.append(self._backend_message)
            import gevent

            gevent.spawn(metrics.flush_periodically)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        family = route_family(environ["PATH_INFO"])
        if family is None:
            return self.app(environ, start_response)
        exchange = Exchange(self, family, environ, start_response)
        return ObservedBody(self.app(environ, exchange.start_response), exchange)

    def finish(self, exchange: Exchange) -> None:
        try:
            exchange.record()
        except Exception:
            if not self._failed:  # say it once; the response itself was unaffected
                self._failed = True
                log.exception("recording a request for metrics/activity failed")

    def flush(self) -> None:
        """Write what the metrics hold in memory to their files (at the worker's exit)."""
        if self.metrics is not None:
            self.metrics.flush()

    def _backend_message(self, message: Any) -> None:
        if self.metrics is not None:
            try:
                self.metrics.count_backend_message(message)
            except Exception:
                log.exception("counting a backend event failed")


class Exchange:
    """One request and its response, as far as the observer follows it."""

    __slots__ = ("observer", "family", "environ", "_start_response", "started", "first_byte",
                 "status", "content_type", "tail", "model")

    def __init__(self, observer: Observer, family: str, environ: dict[str, Any],
                 start_response: Any):
        self.observer, self.family, self.environ = observer, family, environ
        self._start_response = start_response
        self.started = time.perf_counter()
        self.first_byte: float | None = None
        self.status = 0
        self.content_type = ""
        self.tail: tuple[bytes, ...] = ()
        self.model: str | None = None

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        self.status = int(status[:3])
        self.model = self.observer.hub.backend.backend.model
        for name, value in headers:
            if name.lower() == "content-type":
                self.content_type = value.lower()
                break
        return self._start_response(status, headers, exc_info)

    def record(self) -> None:
        end = time.perf_counter()
        duration = end - self.started
        ttfb = self.first_byte - self.started if self.first_byte is not None else None
        text = self.content_type.startswith(TEXT_TYPES)
        tail = _join_tail(self.tail) if text else b""
        figures = usage.from_tail(tail) if tail else usage.Usage()
        stream = text and not self.content_type.startswith("application/json")
        error = None
        if self.status >= 400:
            error = (usage.error_message(tail) or f"HTTP {self.status}")[:300]
        elif stream and b'"error"' in tail:  # a stream that ended with an error event
            error = usage.error_message(tail)
        model = self.model or ""
        observer = self.observer
        if observer.metrics is not None:
            observer.metrics.count_request(self.family, self.status, model, duration, ttfb,
                                           figures)
        if observer.activity is not None:
            environ = self.environ
            observer.activity.append({
                "time": round(time.time() - (end - self.started), 3),
                "client": client_kind(environ.get("REMOTE_ADDR")),
                "method": environ["REQUEST_METHOD"], "route": environ["PATH_INFO"],
                "family": self.family, "model": self.model, "status": self.status,
                "stream": stream, "duration_ms": round(duration * 1000, 2),
                "ttfb_ms": round(ttfb * 1000, 2) if ttfb is not None else None,
                "prompt_tokens": figures.prompt, "generated_tokens": figures.generated,
                "cached_tokens": figures.cached,
                "tokens_per_s": round(figures.tokens_per_s, 2)
                if figures.tokens_per_s is not None else None,
                "error": error,
            })


class ObservedBody:
    """The response iterable: passes every chunk on, remembers the last few, and records the
    exchange when the server closes it."""

    __slots__ = ("inner", "exchange", "_closed")

    def __init__(self, inner: Iterable[bytes], exchange: Exchange):
        self.inner, self.exchange, self._closed = inner, exchange, False

    def __iter__(self) -> Iterator[bytes]:
        exchange = self.exchange
        chunks = iter(self.inner)
        a = b = c = d = b""
        try:
            for data in chunks:
                exchange.first_byte = time.perf_counter()
                # the relay may pass views of one buffer it reuses: keep copies (small: a
                # read is one event or a few), never the view
                d = bytes(data) if type(data) is memoryview else data
                yield data
                break
            for data in chunks:
                a, b, c, d = b, c, d, (bytes(data) if type(data) is memoryview else data)
                yield data
        finally:
            exchange.tail = (a, b, c, d)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            self.exchange.observer.finish(self.exchange)


def _join_tail(chunks: tuple[bytes, ...]) -> bytes:
    """The last TAIL_BYTES of the remembered chunks, copying no more than that."""
    parts, size = [], 0
    for chunk in reversed(chunks):
        parts.append(chunk)
        size += len(chunk)
        if size >= TAIL_BYTES:
            break
    return b"".join(reversed(parts))[-TAIL_BYTES:]


def install(app: Any, hub: Any, runtime: Path, settings: dict[str, Any]) -> Any:
    """The WSGI application to serve: `app` inside an Observer, or `app` alone when metrics
    and activity are both off (then nothing of this runs, nor is prometheus_client loaded)."""
    metrics = activity = None
    if settings["metrics"]:
        from llmctl.daemon.metrics import open_store

        open_store(runtime)
        from llmctl.daemon.gpu import GpuProbe
        from llmctl.daemon.metrics import Metrics

        metrics = Metrics(hub, GpuProbe())
    if settings["activity"]:
        from llmctl.daemon.activity import ActivityLog

        activity = ActivityLog(settings["activity_size"])
    if metrics is None and activity is None:
        return app
    observer = Observer(app, hub, metrics, activity)
    app.observer = observer
    return observer
