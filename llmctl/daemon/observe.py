"""What the proxy worker sees of each proxied request, for the metrics and the activity log.

`Observer` is WSGI middleware around the App. For the routes that reach llama-server (the
route families `v1`, `native`, `api`; control routes pass through untouched) it notes the
arrival time, the status and content type from start_response, and the time of the first
body chunk. The response bytes go through unchanged and are not held: a stream keeps only
its last TAIL_BYTES (where llama-server puts `usage` and `timings`), a JSON body is kept whole
only up to JSON_BYTES, anything else not at all. Everything else happens in close(), after
the server has written the response's last byte, so a client never waits for it.

Observation must never break a response: a failure in the accounting is logged once and
swallowed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from llmctl.daemon import usage

log = logging.getLogger("llmctld.proxy")

TAIL_BYTES = 8 * 1024
JSON_BYTES = 256 * 1024
ERROR_TEXT = 300

# llama-server's own routes that the proxy forwards as they are (besides /v1)
NATIVE_ROUTES = frozenset((
    "/completion", "/completions", "/infill", "/embedding", "/embeddings", "/rerank",
    "/reranking", "/tokenize", "/detokenize", "/apply-template", "/chat/completions",
))
NATIVE_PREFIXES = ("/backend/",)


def route_family(path: str) -> str | None:
    """`v1`, `native` or `api` for the routes that reach a model; None for control routes."""
    if path.startswith("/v1/"):
        return None if path == "/v1/models" else "v1"
    if path.startswith("/api/"):
        return "api"
    if path in NATIVE_ROUTES or path.startswith(NATIVE_PREFIXES):
        return "native"
    return None


def client_kind(address: str | None) -> str:
    try:
        return "loopback" if address and ipaddress.ip_address(address).is_loopback else "lan"
    except ValueError:
        return "lan"


class Observer:
    def __init__(self, app: Any, hub: Any, metrics: Any | None, activity: Any | None):
        self.app, self.hub, self.metrics, self.activity = app, hub, metrics, activity
        self._failed = False
        if metrics is not None:
            hub.listeners.append(self._backend_message)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        family = route_family(environ["PATH_INFO"])
        if family is None:
            return self.app(environ, start_response)
        exchange = Exchange(self, family, environ, start_response)
        result = self.app(environ, exchange.start_response)
        if isinstance(result, list):  # an answer made here (an error): record it at once
            exchange.first_byte = time.perf_counter()
            if exchange.mode:
                exchange.kept += b"".join(result)[-JSON_BYTES:]
            self.finish(exchange)
            return result
        return ObservedBody(result, exchange)

    def finish(self, exchange: Exchange) -> None:
        try:
            exchange.record()
        except Exception:
            if not self._failed:  # say it once; the response itself was unaffected
                self._failed = True
                log.exception("recording a request for metrics/activity failed")

    def _backend_message(self, message: dict[str, Any]) -> None:
        if message.get("type") in ("reply", "event") and self.metrics is not None:
            try:
                self.metrics.count_backend_message(message)
            except Exception:
                log.exception("counting a backend event failed")


class Exchange:
    """One request and its response, as far as the observer follows it."""

    __slots__ = ("observer", "family", "environ", "_start_response", "started", "at",
                 "first_byte", "status", "mode", "kept", "model")

    def __init__(self, observer: Observer, family: str, environ: dict[str, Any],
                 start_response: Any):
        self.observer, self.family, self.environ = observer, family, environ
        self._start_response = start_response
        self.started = time.perf_counter()
        self.at = time.time()
        self.first_byte: float | None = None
        self.status = 0
        self.mode = ""  # "sse", "ndjson", "json" or "" (kept nothing)
        self.kept = bytearray()
        self.model: str | None = None

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        self.status = int(status[:3])
        self.model = self.observer.hub.backend.get("model")
        for name, value in headers:
            if name.lower() == "content-type":
                value = value.lower()
                self.mode = "sse" if value.startswith("text/event-stream") else (
                    "ndjson" if "ndjson" in value else (
                        "json" if value.startswith("application/json") else ""))
                break
        return self._start_response(status, headers, exc_info)

    def record(self) -> None:
        end = time.perf_counter()
        duration = end - self.started
        ttfb = self.first_byte - self.started if self.first_byte is not None else None
        kept = bytes(self.kept)
        if self.mode == "sse":
            figures = usage.from_sse_tail(kept)
        elif self.mode == "ndjson":
            figures = usage.from_ndjson_tail(kept)
        elif self.mode == "json" and kept:
            figures = usage.from_json(kept)
        else:
            figures = usage.Usage()
        model = self.model or ""
        observer = self.observer
        if observer.metrics is not None:
            observer.metrics.count_request(self.family, self.status, model, duration, ttfb,
                                           figures)
        if observer.activity is not None:
            observer.activity.append({
                "time": round(self.at, 3),
                "client": client_kind(self.environ.get("REMOTE_ADDR")),
                "method": self.environ["REQUEST_METHOD"], "route": self.environ["PATH_INFO"],
                "family": self.family, "model": self.model, "status": self.status,
                "stream": self.mode in ("sse", "ndjson"),
                "duration_ms": round(duration * 1000, 2),
                "ttfb_ms": round(ttfb * 1000, 2) if ttfb is not None else None,
                "prompt_tokens": figures.prompt, "generated_tokens": figures.generated,
                "cached_tokens": figures.cached,
                "tokens_per_s": round(figures.tokens_per_s, 2)
                if figures.tokens_per_s is not None else None,
                "error": _error_text(self.status, self.mode, kept),
            })


class ObservedBody:
    """The response iterable: passes every chunk on, keeps the bounded part, and records the
    exchange when the server closes it."""

    __slots__ = ("inner", "exchange", "_closed")

    def __init__(self, inner: Iterable[bytes], exchange: Exchange):
        self.inner, self.exchange, self._closed = inner, exchange, False

    def __iter__(self) -> Iterator[bytes]:
        exchange = self.exchange
        kept = exchange.kept
        for data in self.inner:
            if exchange.first_byte is None:
                exchange.first_byte = time.perf_counter()
            if exchange.mode in ("sse", "ndjson"):
                kept += data
                if len(kept) > 2 * TAIL_BYTES:  # trim now and then, not on every chunk
                    del kept[:-TAIL_BYTES]
            elif exchange.mode == "json" and len(kept) + len(data) <= JSON_BYTES:
                kept += data
            elif exchange.mode == "json":  # too big to be worth parsing: let it go
                exchange.mode = ""
                kept.clear()
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
            self.exchange.observer.finish(self.exchange)


def _error_text(status: int, mode: str, kept: bytes) -> str | None:
    """The message of an error answer, or of an error event that ended a stream."""
    if status < 400 and not (mode == "sse" and b'"error"' in kept[-2048:]):
        return None
    text = kept[-2048:] if mode == "sse" else kept
    for line in reversed(text.split(b"\n")):
        line = line.removeprefix(b"data:").strip()
        if line.startswith(b"{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            err = doc.get("error") if isinstance(doc, dict) else None
            if isinstance(err, dict):
                return str(err.get("message") or err.get("type") or status)[:ERROR_TEXT]
            if isinstance(err, str):
                return err[:ERROR_TEXT]
    return f"HTTP {status}" if status >= 400 else None


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
