"""Prometheus metrics of llmctld, kept with prometheus_client and served at GET /metrics.

Where the counters live: they must survive a proxy-worker restart (upgrade, crash, leak), and
the proxy worker is the only process that sees requests. So they use prometheus_client's
multiprocess mode: each worker's values are kept in its own memory-mapped file,
`$LLMCTL_RUNTIME_HOME/metrics/<kind>_<pid>.db`, which outlives the worker (even a `kill -9`:
the pages belong to the file, not to the process), and a scrape sums the files of every proxy
worker since the daemon started, so the totals carry on across restarts. Writing a file value
costs microseconds (a lock and a struct write per value, ten values per request), too much
for every request, so a request only adds to plain dicts and `flush()` moves the sums into the
files: every FLUSH_SECONDS, before every scrape, and when the worker exits. A worker that
crashes loses at most its last FLUSH_SECONDS of counts; nothing is estimated or rebuilt. The
directory is emptied when the daemon starts: a daemon restart starts the counters from zero,
as Prometheus expects of a restarted target.

Gauges (in flight, backend state, worker restarts, GPU memory) are read live at scrape time
from the hub and the GPU probe, so they need no files. Worker restarts come from the
supervisor's own count, which no worker restart resets.

Backend figures (switches by outcome, load seconds, idle unloads) are counted from the
lifecycle worker's replies, which reach exactly one proxy worker each (the one that sent the
command: the scheduler sends the idle unload's Stop), so a graceful restart with two workers
alive counts nothing twice.

prometheus_client is imported only inside Metrics, in the proxy worker, after `open_store`:
it picks its storage when it is first imported. (llmctld's start-up imports this module only
for clear_store.)
"""

from __future__ import annotations

import bisect
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmctl.core.state import BACKEND_STATES

STORE_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_SECONDS = 1.0

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                    600, float("inf"))
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                float("inf"))
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, float("inf"))
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))


def store(runtime: Path) -> Path:
    return runtime / "metrics"


def clear_store(runtime: Path) -> None:
    """Called by llmctld at start-up, before any worker exists."""
    shutil.rmtree(store(runtime), ignore_errors=True)


def open_store(runtime: Path) -> None:
    """Point prometheus_client at the counters' directory; before it is first imported."""
    directory = store(runtime)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[STORE_ENV] = str(directory)


class Metrics:
    """The metric objects, and the figures of one request or backend event turned into
    increments. Children are cached per label set (`labels()` is slow), and increments wait
    in `pending` until the next flush()."""

    def __init__(self, hub: Any, gpu: Any):
        # submodules by name: the proxy skips the package __init__ (processes/slim.py)
        from prometheus_client import values
        from prometheus_client.metrics import Counter, Histogram
        from prometheus_client.multiprocess import MultiProcessCollector
        from prometheus_client.registry import CollectorRegistry

        store = os.environ.get(STORE_ENV)
        if not store or not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError("metrics.open_store() must run before prometheus_client is "
                               "imported")
        self.registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(self.registry, path=store)
        self.registry.register(LiveCollector(hub, gpu))
        self.requests = Counter(
            "llmctl_requests", "Proxied requests by route family (v1, native, api), HTTP "
            "status and model", ["family", "status", "model"], registry=None)
        self.duration = Histogram(
            "llmctl_request_duration_seconds", "Time from the request's arrival to the end of "
            "its response", ["family"], buckets=DURATION_BUCKETS, registry=None)
        self.ttfb = Histogram(
            "llmctl_time_to_first_byte_seconds", "Time from the request's arrival to the first "
            "byte of its response body", ["family"], buckets=TTFB_BUCKETS, registry=None)
        self.prompt_tokens = Counter(
            "llmctl_prompt_tokens", "Prompt tokens, as llama-server reported them",
            ["model"], registry=None)
        self.cached_tokens = Counter(
            "llmctl_cached_prompt_tokens", "Prompt tokens llama-server reused from its cache",
            ["model"], registry=None)
        self.generated_tokens = Counter(
            "llmctl_generated_tokens", "Generated tokens, as llama-server reported them",
            ["model"], registry=None)
        self.tokens_per_s = Histogram(
            "llmctl_generation_tokens_per_second", "Generation speed of each request, as "
            "llama-server measured it", ["model"], buckets=TOKENS_PER_S_BUCKETS, registry=None)
        self.switches = Counter(
            "llmctl_switches", "Switches by outcome (loaded, already_active, or the error "
            "code)", ["outcome"], registry=None)
        self.load_seconds = Histogram(
            "llmctl_load_seconds", "How long each model load took", ["model"],
            buckets=LOAD_BUCKETS, registry=None)
        self.idle_unloads = Counter(
            "llmctl_idle_unloads", "Models unloaded because they sat idle", ["model"],
            registry=None)
        self.kv_tokens = {kind: Counter(
            f"llmctl_kv_{kind}_tokens", help_, ["model"], registry=None) for kind, help_ in (
            ("restored", "KV-cache tokens restored from a save when a model loaded"),
            ("reused", "Restored KV-cache tokens the first request after the restore reused "
             "(llama-server's timings.cache_n)"),
            ("saved", "KV-cache tokens saved when a model stopped"))}
        self.kv_bytes = {kind: Counter(
            f"llmctl_kv_{kind}_bytes", f"Bytes of KV-cache files {kind}", ["model"],
            registry=None) for kind in ("saved", "restored")}
        self.kv_seconds = {kind: Histogram(
            f"llmctl_kv_{kind}_seconds", f"How long each KV-cache {kind} took", ["model"],
            buckets=DURATION_BUCKETS, registry=None) for kind in ("save", "restore")}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._request_sums: dict[tuple[str, int, str], RequestSums] = {}
        self.pending = Pending()
        self.inc, self.observe, self.flush = (self.pending.inc, self.pending.observe,
                                              self.pending.flush)
        self._last_load: tuple[str, Any] | None = None
        self._last_unload: Any = None
        self.hub = hub

    def child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def count_request(self, family: str, status: int, model: str, duration: float,
                      ttfb: float | None, usage: Any) -> None:
        """Once per proxied request: a few additions to the pending sums of its labels."""
        sums = self._request_sums.get((family, status, model))
        if sums is None:
            sums = self._new_request_sums(family, status, model)
        sums.count += 1
        pending = sums.durations
        pending[bisect.bisect_left(sums.duration_bounds, duration)] += 1
        pending[-1] += duration
        if ttfb is not None:
            pending = sums.ttfbs
            pending[bisect.bisect_left(sums.ttfb_bounds, ttfb)] += 1
            pending[-1] += ttfb
        if usage.prompt:
            sums.prompt_tokens += usage.prompt
        if usage.cached:
            sums.cached_tokens += usage.cached
        if usage.generated:
            sums.generated_tokens += usage.generated
        speed = usage.tokens_per_s
        if speed:
            pending = sums.speeds
            pending[bisect.bisect_left(sums.speed_bounds, speed)] += 1
            pending[-1] += speed

    def _new_request_sums(self, family: str, status: int, model: str) -> RequestSums:
        child = self.child
        sums = RequestSums(
            child(self.requests, family, str(status), model), child(self.duration, family),
            child(self.ttfb, family), child(self.prompt_tokens, model),
            child(self.cached_tokens, model), child(self.generated_tokens, model),
            child(self.tokens_per_s, model))
        self._request_sums[(family, status, model)] = sums
        self.pending.requests.append(sums)
        return sums

    def count_kv_reuse(self, model: str, kv: dict[str, int]) -> None:
        self.inc(self.child(self.kv_tokens["reused"], model), kv["reused"])

    def _count_kv_events(self, events: Any) -> None:
        """Saves and restores, each carried by exactly one lifecycle reply."""
        for event in events if isinstance(events, list) else []:
            model, kind = str(event.get("model") or ""), event.get("kind")
            if kind not in ("save", "restore"):
                continue
            done = "saved" if kind == "save" else "restored"
            self.inc(self.child(self.kv_tokens[done], model), float(event.get("tokens") or 0))
            self.inc(self.child(self.kv_bytes[done], model), float(event.get("bytes") or 0))
            self.observe(self.child(self.kv_seconds[kind], model),
                         float(event.get("seconds") or 0))

    def count_backend_message(self, message: Any) -> None:
        """A lifecycle Reply (a protocol record): switch outcomes, load times, idle unloads,
        KV-cache saves and restores. Each reply reaches only the proxy worker whose command
        it answers."""
        from llmctl.daemon.ipc import protocol as p

        if not isinstance(message, p.Reply):
            return
        data = message.data
        if "kv_events" in data:
            self._count_kv_events(data["kv_events"])
        model = str(data.get("model") or "")
        if data.get("event") == "ready":
            if data.get("already_active"):
                self.inc(self.child(self.switches, "already_active"))
                return
            self.inc(self.child(self.switches, "loaded"))
            seconds = data.get("load_seconds")
            # switches that joined one load each get a reply: the load counts once
            if isinstance(seconds, (int, float)) and (model, seconds) != self._last_load:
                self._last_load = (model, seconds)
                self.observe(self.child(self.load_seconds, model), seconds)
        elif data.get("event") == "error":
            code = (message.error or {}).get("code")
            self.inc(self.child(self.switches, str(code or "error")))
        elif message.ok and data.get("stopped"):
            # a stop's reply comes after the State broadcast of its end: the record then
            # says whether it was an idle unload (the scheduler's Stop(idle_seconds))
            unloaded = self.hub.backend.backend.unloaded
            if unloaded and unloaded.get("model") == data["stopped"] and \
                    unloaded.get("at") != self._last_unload:
                self._last_unload = unloaded.get("at")
                self.inc(self.child(self.idle_unloads, str(data["stopped"])))

    def render(self) -> tuple[bytes, str]:
        from llmctl.daemon.processes.slim import import_needing_https

        exposition = import_needing_https("prometheus_client.exposition")  # the first scrape's
        self.flush()
        return exposition.generate_latest(self.registry), exposition.CONTENT_TYPE_LATEST

    def flush_periodically(self) -> None:
        """A greenlet's loop in the proxy worker."""
        import gevent

        while True:
            gevent.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # a full disk must not end the flushing for good
                import logging

                logging.getLogger("llmctld.proxy").exception("writing the metrics failed")


class RequestSums:
    """What the requests of one (family, status, model) added since the last flush, with the
    metric children it goes to. Histograms pend as [count per bucket..., sum]."""

    __slots__ = ("children", "count", "prompt_tokens", "cached_tokens", "generated_tokens",
                 "durations", "ttfbs", "speeds", "duration_bounds", "ttfb_bounds",
                 "speed_bounds")

    def __init__(self, requests: Any, duration: Any, ttfb: Any, prompt: Any, cached: Any,
                 generated: Any, speed: Any):
        self.children = (requests, duration, ttfb, prompt, cached, generated, speed)
        self.duration_bounds = duration._upper_bounds
        self.ttfb_bounds = ttfb._upper_bounds
        self.speed_bounds = speed._upper_bounds
        self._reset()

    def _reset(self) -> None:
        self.count = self.prompt_tokens = self.cached_tokens = self.generated_tokens = 0
        self.durations = [0.0] * (len(self.duration_bounds) + 1)
        self.ttfbs = [0.0] * (len(self.ttfb_bounds) + 1)
        self.speeds = [0.0] * (len(self.speed_bounds) + 1)

    def flush(self) -> None:
        if not self.count:
            return
        requests, duration, ttfb, prompt, cached, generated, speed = self.children
        requests.inc(self.count)
        for child, amount in ((prompt, self.prompt_tokens), (cached, self.cached_tokens),
                              (generated, self.generated_tokens)):
            if amount:
                child.inc(amount)
        for child, pending in ((duration, self.durations), (ttfb, self.ttfbs),
                               (speed, self.speeds)):
            _add_observed(child, pending)
        self._reset()


def _add_observed(child: Any, pending: list[float]) -> None:
    """Pending observations into a histogram child: its per-bucket values are
    prometheus_client internals (`_buckets`, `_sum`, `_upper_bounds`);
    tests/unit/test_observability.py checks that a flushed histogram equals one fed with
    observe()."""
    if not any(pending[:-1]):
        return
    for bucket, count in zip(child._buckets, pending, strict=False):
        if count:
            bucket.inc(count)
    child._sum.inc(pending[-1])


class Pending:
    """Increments not yet written: plain additions per request, one file write per value
    and flush."""

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}  # counter child -> pending increment
        self._observed: dict[Any, list[float]] = {}  # histogram child -> [per bucket..., sum]
        self.requests: list[RequestSums] = []  # one per label set seen, for good

    def inc(self, child: Any, amount: float = 1.0) -> None:
        self._counts[child] = self._counts.get(child, 0.0) + amount

    def observe(self, child: Any, value: float) -> None:
        pending = self._observed.get(child)
        if pending is None:
            pending = self._observed[child] = [0.0] * (len(child._upper_bounds) + 1)
        # the bucket Histogram.observe() would count it in: the first bound >= value
        pending[bisect.bisect_left(child._upper_bounds, value)] += 1
        pending[-1] += value

    def flush(self) -> None:
        """Move the pending increments into the metrics."""
        counts, self._counts = self._counts, {}
        for child, amount in counts.items():
            child.inc(amount)
        observed, self._observed = self._observed, {}
        for child, pending in observed.items():
            _add_observed(child, pending)
        for sums in self.requests:
            sums.flush()


class LiveCollector:
    """Gauges read at scrape time: nothing to store, nothing to lose in a restart."""

    def __init__(self, hub: Any, gpu: Any):
        self.hub, self.gpu = hub, gpu

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        hub = self.hub
        yield GaugeMetricFamily("llmctl_requests_in_flight",
                                "Proxied requests being answered now", value=hub.gate.in_flight)
        backend = hub.backend.backend  # core.state.Backend
        state = GaugeMetricFamily("llmctl_backend_state", "1 for the backend's current state",
                                  labels=["state"])
        for name in BACKEND_STATES:
            state.add_metric([name], 1.0 if backend.state == name else 0.0)
        yield state
        model = GaugeMetricFamily("llmctl_backend_model_info",
                                  "1 for the model the backend state is about",
                                  labels=["model"])
        if backend.model:
            model.add_metric([str(backend.model)], 1.0)
        yield model
        progress = backend.progress or {}
        if backend.state == "starting" and progress.get("percent") is not None:
            yield GaugeMetricFamily("llmctl_backend_load_progress_ratio",
                                    "How far the model load has come (0-1)",
                                    value=float(progress["percent"]) / 100)
        yield GaugeMetricFamily("llmctl_backend_pinned", "1 when the model is pinned (never "
                                "unloaded for idleness)", value=1.0 if backend.pinned else 0.0)
        restarts = CounterMetricFamily("llmctl_worker_restarts",
                                       "Worker restarts since the daemon started (the "
                                       "supervisor's count)", labels=["worker"])
        for role, info in sorted(hub.workers.items()):
            restarts.add_metric([role], float(info.get("restarts") or 0))
        yield restarts
        yield from hub.rpc.collect()
        yield from self.gpu.collect()
