"""What the proxy worker sees of each proxied request, for the metrics and the activity log.

`Observer` is WSGI middleware around the App. For the routes that reach llama-server (the
route families `v1`, `native`, `api`; control routes pass through untouched) it notes the
arrival time, the status and content type from start_response, and the time of the first
body chunk. The response bytes go through unchanged and are not held: the observer keeps a
copy of the last TAIL_BYTES only (llama-server puts `usage` and `timings` at the very end), so
a stream of any length costs the same few kilobytes. The rest happens
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

from llmctl.daemon.observe import usage
from llmctl.daemon.observe.kv_reuse import ReuseWatch
from llmctl.daemon.relay.native_routes import backend_path

log = logging.getLogger("llmctld.proxy")

TAIL_BYTES = 16 * 1024  # the end of a response that is searched for its figures
TAIL_SLACK = 4 * TAIL_BYTES  # the kept copy is cut back to TAIL_BYTES when it grows past this

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
        self.reuse = ReuseWatch(hub)
        if metrics is not None:
            hub.listeners.append(self._backend_message)
            import gevent

            gevent.spawn(metrics.flush_periodically)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        family = route_family(environ["PATH_INFO"])
        if family is None:
            return self.app(environ, start_response)
        body = ObservedBody(self, family, environ, start_response)
        body.inner = self.app(environ, body.start_response)
        return body

    def finish(self, body: ObservedBody) -> None:
        try:
            self.record(body)
        except Exception:
            if not self._failed:  # say it once; the response itself was unaffected
                self._failed = True
                log.exception("recording a request for metrics/activity failed")

    def record(self, body: ObservedBody) -> None:
        """The figures of one finished exchange, counted and logged. This runs for every
        proxied request, so it does the least it can: the activity entry stays a tuple until
        someone reads it (activity_entry)."""
        end = time.perf_counter()
        duration = end - body.started
        first_byte = body.first_byte
        ttfb = first_byte - body.started if first_byte else None
        content_type, status = body.content_type, body.status
        text = content_type.startswith(TEXT_TYPES)
        tail = bytes(body.tail) if text else b""
        figures = usage.from_tail(tail) if tail else usage.NONE
        stream = text and not content_type.startswith("application/json")
        error = None
        if status >= 400:
            error = (usage.error_message(tail) or f"HTTP {status}")[:300]
        elif stream and b'"error"' in tail:  # a stream that ended with an error event
            error = usage.error_message(tail)
        kv = self.reuse.seen(figures) if status < 400 and not figures.empty() else None
        if self.metrics is not None:
            self.metrics.count_request(body.family, status, body.model or "", duration, ttfb,
                                       figures)
            if kv is not None:
                self.metrics.count_kv_reuse(body.model or "", kv)
        if self.activity is not None:
            environ = body.environ
            self.activity.append((time.time() - duration, environ.get("REMOTE_ADDR"),
                                  environ["REQUEST_METHOD"], environ["PATH_INFO"], body.family,
                                  body.model, status, stream, duration, ttfb, figures, error,
                                  kv))

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


def activity_entry(record: tuple[Any, ...]) -> dict[str, Any]:
    """An activity entry as /activity shows it, from the tuple Observer.record() logged."""
    (at, address, method, route, family, model, status, stream, duration, ttfb, figures,
     error, kv) = record
    entry = {
        "time": round(at, 3), "client": client_kind(address), "method": method,
        "route": route, "family": family, "model": model, "status": status, "stream": stream,
        "duration_ms": round(duration * 1000, 2),
        "ttfb_ms": round(ttfb * 1000, 2) if ttfb is not None else None,
        "prompt_tokens": figures.prompt, "generated_tokens": figures.generated,
        "cached_tokens": figures.cached,
        "tokens_per_s": round(figures.tokens_per_s, 2)
        if figures.tokens_per_s is not None else None,
        "error": error,
    }
    if kv is not None:  # the first request after a KV-cache restore: what it reused
        entry["kv_restored_tokens"], entry["kv_reused_tokens"] = kv["restored"], kv["reused"]
    return entry


class ObservedBody:
    """One request and its response, as far as the observer follows it: the response
    iterable the server gets. It passes every chunk on as it is, keeps a copy of the last
    TAIL_BYTES (a bounded bytearray: the relay may pass views of a buffer it reuses), and
    records the exchange when the server closes it.

    The relay's chunked pass-through (wsgi_server.Handler asks the response whether it
    can forward llama-server's framing as it is) goes through to the relay underneath."""

    __slots__ = ("observer", "family", "environ", "_start_response", "inner", "started",
                 "first_byte", "status", "content_type", "model", "tail", "_closed")

    def __init__(self, observer: Observer, family: str, environ: dict[str, Any],
                 start_response: Any):
        self.observer, self.family, self.environ = observer, family, environ
        self._start_response = start_response
        self.inner: Iterable[bytes] = ()
        self.started = time.perf_counter()
        self.first_byte = 0.0
        self.status = 0
        self.content_type = ""
        self.model: str | None = None
        self.tail = bytearray()
        self._closed = False

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        self.status = int(status[:3])
        self.model = self.observer.hub.backend.backend.model
        for name, value in headers:
            if name.lower() == "content-type":
                self.content_type = value.lower()
                break
        return self._start_response(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        tail = self.tail
        for data in self.inner:
            if not self.first_byte:
                self.first_byte = time.perf_counter()
            tail += data  # before the next read can reuse the relay's buffer
            if len(tail) > TAIL_SLACK:
                del tail[:-TAIL_BYTES]
            yield data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            if len(self.tail) > TAIL_BYTES:
                del self.tail[:-TAIL_BYTES]
            self.observer.finish(self)

    # the relay's pass-through switches (daemon/relay/openai_proxy.py's Relay)
    @property
    def upstream_chunked(self) -> bool:
        return getattr(self.inner, "upstream_chunked", False)

    @property
    def pass_framing(self) -> bool:
        return getattr(self.inner, "pass_framing", False)

    @pass_framing.setter
    def pass_framing(self, value: bool) -> None:
        self.inner.pass_framing = value  # type: ignore[attr-defined]

    @property
    def framing_complete(self) -> bool:
        return getattr(self.inner, "framing_complete", False)


def install(app: Any, hub: Any, runtime: Path, settings: dict[str, Any]) -> Any:
    """The WSGI application to serve: `app` inside an Observer, or `app` alone when metrics
    and activity are both off (then nothing of this runs, nor is prometheus_client loaded)."""
    metrics = activity = None
    if settings["metrics"]:
        from llmctl.daemon.observe.metrics import open_store

        open_store(runtime)
        from llmctl.daemon.observe.gpu import GpuProbe
        from llmctl.daemon.observe.metrics import Metrics

        metrics = Metrics(hub, GpuProbe())
    if settings["activity"]:
        from llmctl.daemon.observe.activity import ActivityLog

        activity = ActivityLog(settings["activity_size"], activity_entry)
    if metrics is None and activity is None:
        return app
    observer = Observer(app, hub, metrics, activity)
    app.observer = observer
    return observer
