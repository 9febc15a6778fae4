"""Unit tests of the observability parts that need no daemon: reading token figures from
response bodies, the activity ring, the GPU probe with a stub NVML (and without one), the live
gauges, the route families, and the CLI's rendering of activity and `top`."""

from __future__ import annotations

import json
import re
import sys
import types
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmctl.cli import activity as activity_cli
from llmctl.cli import top
from llmctl.daemon.observe import usage
from llmctl.daemon.observe.activity import ActivityLog
from llmctl.daemon.observe.gpu import GpuProbe, parse_rocm_smi
from llmctl.daemon.observe.observer import Observer, activity_entry, client_kind, route_family

# What llama-server puts at the end of its answers (fields as of build b11434)
CHAT_BODY = {
    "choices": [{"finish_reason": "length", "index": 0,
                 "message": {"role": "assistant", "content": "xyz"}}],
    "model": "tiny", "object": "chat.completion",
    "usage": {"completion_tokens": 8, "prompt_tokens": 12, "total_tokens": 20,
              "prompt_tokens_details": {"cached_tokens": 3}},
    "timings": {"cache_n": 3, "prompt_n": 9, "prompt_ms": 1.2, "predicted_n": 8,
                "predicted_ms": 4.0, "predicted_per_second": 2000.0},
}


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode())
                    + b"\n\n" for e in events)


def test_usage_from_a_json_body() -> None:
    figures = usage.from_tail(json.dumps(CHAT_BODY).encode())
    assert (figures.prompt, figures.generated, figures.cached) == (12, 8, 3)
    assert figures.tokens_per_s == 2000.0


def test_usage_from_the_tail_of_a_stream_merges_timings_and_usage() -> None:
    last = {"choices": [{"delta": {}, "finish_reason": "length", "index": 0}],
            "timings": CHAT_BODY["timings"]}
    usage_chunk = {"choices": [], "usage": CHAT_BODY["usage"]}
    # the tail starts in the middle of an earlier event: that fragment is ignored
    tail = b'ent":"x"}}]}\n\n' + sse({"choices": [{"delta": {"content": "y"}}]}, last,
                                     usage_chunk, b"[DONE]")
    figures = usage.from_tail(tail)
    assert (figures.prompt, figures.generated, figures.cached) == (12, 8, 3)
    assert figures.tokens_per_s == 2000.0


# the end of a real answer and of a real stream (llama-server b11434, a tiny model)
REAL_TAILS = [
    b'"usage":{"completion_tokens":3,"prompt_tokens":56,"total_tokens":59,"prompt_tokens_detail'
    b's":{"cached_tokens":0}},"id":"chatcmpl-rGKd","timings":{"cache_n":0,"prompt_n":56,"prompt'
    b'_ms":2.473,"prompt_per_token_ms":0.04416071428571428,"prompt_per_second":22644.5612616255'
    b'57,"predicted_n":3,"predicted_ms":0.447,"predicted_per_token_ms":0.2235,"predicted_per_se'
    b'cond":4474.27293064877}}',
    b'data: {"choices":[],"created":1796127245,"object":"chat.completion.chunk","usage":{"compl'
    b'etion_tokens":3,"prompt_tokens":56,"total_tokens":59,"prompt_tokens_details":{"cached_tok'
    b'ens":55}},"timings":{"cache_n":55,"prompt_n":1,"prompt_ms":0.226,"prompt_per_token_ms":0.'
    b'226,"prompt_per_second":4424.778761061947,"predicted_n":3,"predicted_ms":1.481,"predicted'
    b'_per_token_ms":0.7405,"predicted_per_second":1350.438892640108}}\n\ndata: [DONE]\n\n',
]


@pytest.mark.parametrize("tail", REAL_TAILS)
def test_the_one_match_reading_of_timings_agrees_with_the_long_way(tail: bytes) -> None:
    assert usage._TIMINGS_AS_WRITTEN.search(tail) is not None  # llama-server's order holds
    assert usage.from_tail(tail) == usage._from_fields(tail)


def test_usage_without_include_usage_comes_from_timings() -> None:
    last = {"choices": [{"delta": {}, "finish_reason": "stop"}], "timings": CHAT_BODY["timings"]}
    figures = usage.from_tail(sse(last, b"[DONE]"))
    assert (figures.prompt, figures.generated, figures.cached) == (12, 8, 3)


def test_usage_of_native_completion_and_ollama_style_lines() -> None:
    native = usage.from_tail(json.dumps({"content": "x", "tokens_predicted": 5,
                                         "tokens_evaluated": 7}).encode())
    assert (native.prompt, native.generated) == (7, 5)
    tail = b'{"done":false}\n{"done":true,"eval_count":10,"prompt_eval_count":4,' \
           b'"eval_duration":500000000}\n'
    ollama = usage.from_tail(tail)
    assert (ollama.prompt, ollama.generated, ollama.tokens_per_s) == (4, 10, 20.0)


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,2]", b'{"usage": "weird"}',
                                  b'{"usage": {"prompt_tokens": -1, "completion_tokens": true}}'])
def test_unreadable_bodies_have_no_figures(body: bytes) -> None:
    assert usage.from_tail(body).empty()
    assert usage.from_tail(b"data: " + body + b"\n\n").empty()


def test_generated_text_that_looks_like_figures_is_not_read_as_them() -> None:
    """Inside a JSON string the quotes are escaped, so `"usage":` never matches there."""
    chunk = {"choices": [{"delta": {"content": '{"usage": {"completion_tokens": 999}, '
                                               '"error": {"message": "no"}}'}}]}
    tail = sse(chunk, {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}})
    figures = usage.from_tail(tail)
    assert (figures.prompt, figures.generated) == (2, 1)
    assert usage.error_message(sse(chunk)) is None


def test_the_error_of_an_answer_or_a_cut_stream() -> None:
    body = b'{"error":{"code":400,"message":"the request exceeds the context",' \
           b'"type":"exceed_context_size_error"}}'
    assert usage.error_message(body) == "the request exceeds the context"
    cut = sse({"choices": [{"delta": {"content": "x"}}]},
              {"error": {"code": 502, "message": "llama-server stopped"}})
    assert usage.error_message(cut) == "llama-server stopped"


@pytest.mark.parametrize(("path", "family"), [
    ("/v1/chat/completions", "v1"), ("/v1/models", None), ("/api/chat", "api"),
    ("/completion", "native"), ("/infill", "native"), ("/backend/metrics", "native"),
    ("/slots/0", "native"),
    ("/status", None), ("/", None), ("/metrics", None), ("/activity", None)])
def test_route_families(path: str, family: str | None) -> None:
    assert route_family(path) == family


def test_client_kind() -> None:
    assert client_kind("127.0.0.1") == client_kind("::1") == "loopback"
    assert client_kind("192.168.1.20") == client_kind("junk") == client_kind(None) == "lan"


class ReusingRelay:
    """Like openai_proxy.Relay with pass_framing: yields views of one buffer it refills."""

    upstream_chunked = True

    def __init__(self, pieces: list[bytes]):
        self.pieces, self.pass_framing, self.framing_complete = pieces, False, False
        self.closed = False

    def __iter__(self) -> Any:
        buffer = bytearray(64)
        for piece in self.pieces:
            buffer[:len(piece)] = piece
            yield memoryview(buffer)[:len(piece)]
        self.framing_complete = True

    def close(self) -> None:
        self.closed = True


def test_the_observer_keeps_the_relays_pass_through_and_copies_its_tail() -> None:
    from llmctl.core.state import Backend

    hub = types.SimpleNamespace(backend=types.SimpleNamespace(backend=Backend(
        state="ready", model="tiny-a")), listeners=[])
    pieces = [b"a" * 40, b"data: {}\n\n", b"data: [DONE]\n\n"]
    relay = ReusingRelay(pieces)
    ring = ActivityLog(4, activity_entry)
    observer = Observer(lambda environ, start: (start("200 OK", [
        ("Content-Type", "text/event-stream")]), relay)[1], hub, None, ring)
    body: Any = observer({"PATH_INFO": "/v1/chat/completions", "REQUEST_METHOD": "POST",
                          "REMOTE_ADDR": "127.0.0.1"}, lambda *a: None)
    # what wsgi_server.Handler asks of the response before it forwards framing as it is
    assert body.upstream_chunked and not body.framing_complete
    body.pass_framing = True
    assert relay.pass_framing
    assert b"".join(bytes(c) for c in body) == b"".join(pieces)
    assert body.framing_complete
    body.close()
    assert relay.closed
    assert bytes(body.tail) == b"".join(pieces)  # copies, not the reused buffer's last state
    [entry] = ring.since(0)
    assert (entry["model"], entry["status"], entry["stream"], entry["client"]) == (
        "tiny-a", 200, True, "loopback")


def test_the_activity_ring_is_bounded_and_resumable() -> None:
    from llmctl.daemon.observe.activity import ActivityLog

    ring = ActivityLog(3)
    for n in range(5):
        ring.append({"n": n})
    assert [e["n"] for e in ring.since(0)] == [2, 3, 4]
    assert [e["seq"] for e in ring.since(3)] == [4, 5]
    assert [e["n"] for e in ring.since(0, limit=1)] == [4]
    assert [e["n"] for e in ring.since(99)] == [2, 3, 4]  # a seq from a previous worker


# --- GPU memory ------------------------------------------------------------------------------


class StubNvml(types.ModuleType):
    """Stands in for nvidia-ml-py's pynvml: two GPUs, as NVML reports them."""

    class Memory:
        def __init__(self, used: int, total: int):
            self.used, self.total, self.free = used, total, total - used

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes | str:
        return b"NVIDIA GeForce RTX 4090" if handle == 0 else "NVIDIA A100"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Memory:
        return self.Memory((handle + 1) * 2**30, 24 * 2**30)


def scrape(collector: Any) -> dict[str, Any]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_gpu_memory_from_an_injected_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = StubNvml()
    monkeypatch.setitem(sys.modules, "pynvml", stub)  # what `import pynvml` will find
    monkeypatch.setattr("llmctl.daemon.observe.gpu.DRIVER_PATHS", ("/",))  # "a driver here"
    probe = GpuProbe(rocm_smi=None)
    families = scrape(probe)
    used = {s.labels["gpu"]: s.value for s in families["llmctl_gpu_memory_used_bytes"].samples}
    total = families["llmctl_gpu_memory_total_bytes"].samples
    assert used == {"0": 2**30, "1": 2 * 2**30}
    assert {s.labels["name"] for s in total} == {"NVIDIA GeForce RTX 4090", "NVIDIA A100"}
    assert {s.labels["vendor"] for s in total} == {"nvidia"}
    assert all(s.value == 24 * 2**30 for s in total)
    scrape(probe)
    assert stub.inits == 1  # probed once, not at every scrape


def test_no_gpu_means_no_gpu_series(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> Any:
        module = StubNvml()

        def fail() -> None:
            raise OSError("NVML Shared Library Not Found")

        module.nvmlInit = fail  # type: ignore[method-assign]
        return module

    monkeypatch.setattr("shutil.which", lambda name: None)  # and no rocm-smi
    for probe in (GpuProbe(load_nvml=no_driver), GpuProbe(load_nvml=_missing_module)):
        assert probe.read() == []
        assert scrape(probe) == {}


def _missing_module() -> Any:
    raise ImportError("No module named 'pynvml'")


def test_rocm_smi_output() -> None:
    out = json.dumps({"card0": {"VRAM Total Memory (B)": "17163091968",
                                "VRAM Total Used Memory (B)": "1073741824"},
                      "system": {"Driver version": "6.8"}}).encode()
    [gpu] = parse_rocm_smi(out)
    assert (gpu.index, gpu.vendor, gpu.used, gpu.total) == (0, "amd", 2**30, 17163091968)


# --- metrics written in batches ----------------------------------------------------------------


def test_a_flushed_batch_equals_direct_updates() -> None:
    """Pending uses prometheus_client's histogram internals: this catches a change in them."""
    from prometheus_client import Counter, Histogram

    from llmctl.daemon.observe.metrics import DURATION_BUCKETS, Pending

    direct = Histogram("d", "d", buckets=DURATION_BUCKETS, registry=None)
    batched = Histogram("d", "d", buckets=DURATION_BUCKETS, registry=None)
    counted, batch_counted = (Counter("c", "c", registry=None) for _ in range(2))
    pending = Pending()
    values = [0.0, 0.005, 0.0051, 0.3, 2.5, 7, 599.9, 601, 1e6]
    for v in values:
        direct.observe(v)
        pending.observe(batched, v)
        counted.inc(v)
        pending.inc(batch_counted, v)
    assert [s.value for s in batched.collect()[0].samples
            if s.name == "d_count"] == [0]  # nothing is written before the flush
    pending.flush()
    pending.flush()  # idempotent: nothing is written twice

    def samples(metric: Any) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for s in metric.collect()[0].samples
                if not s.name.endswith("_created")]

    assert samples(batched) == samples(direct)
    assert samples(batch_counted) == samples(counted)


# --- the live gauges ---------------------------------------------------------------------------


class StubHub:
    """What the collector reads of daemon/api/hub.py's Hub."""

    def __init__(self) -> None:
        from llmctl.core.state import Backend

        self.gate = types.SimpleNamespace(in_flight=2)
        self.backend = types.SimpleNamespace(backend=Backend(
            state="starting", model="tiny-alpha", progress={"phase": "loading", "percent": 40.0}))
        self.workers = {"proxy": {"restarts": 3}, "lifecycle": {"restarts": 0}}
        from llmctl.daemon.rpc.view import RpcView

        self.rpc = RpcView()
        self.rpc.apply([
            {"name": "gpu-a", "address": "127.0.0.1:50052", "state": "up",
             "devices": [{"free": 2048, "total": 4096}]},
            {"name": "gpu-b", "address": "127.0.0.1:50053", "state": "down",
             "error": "connection refused"}])


def test_live_gauges_come_from_the_hub_and_the_gpu_probe(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from llmctl.daemon.observe.metrics import LiveCollector

    monkeypatch.setitem(sys.modules, "pynvml", StubNvml())
    monkeypatch.setattr("llmctl.daemon.observe.gpu.DRIVER_PATHS", ("/",))  # "a driver here"
    families = scrape(LiveCollector(StubHub(), GpuProbe(rocm_smi=None)))
    assert families["llmctl_requests_in_flight"].samples[0].value == 2
    states = {s.labels["state"]: s.value for s in families["llmctl_backend_state"].samples}
    assert states == {"stopped": 0, "starting": 1, "ready": 0, "stopping": 0, "failed": 0}
    assert families["llmctl_backend_model_info"].samples[0].labels == {"model": "tiny-alpha"}
    assert families["llmctl_backend_load_progress_ratio"].samples[0].value == 0.4
    assert families["llmctl_backend_pinned"].samples[0].value == 0
    restarts = {s.labels["worker"]: s.value for s in families["llmctl_worker_restarts"].samples
                if s.name.endswith("_total")}
    assert restarts == {"proxy": 3, "lifecycle": 0}
    assert len(families["llmctl_gpu_memory_used_bytes"].samples) == 2
    up = {s.labels["worker"]: (s.labels["state"], s.value)
          for s in families["llmctl_rpc_worker_up"].samples}
    assert up == {"gpu-a": ("up", 1.0), "gpu-b": ("down", 0.0)}
    free = families["llmctl_rpc_worker_memory_free_bytes"].samples
    assert [(s.labels, s.value) for s in free] == [({"worker": "gpu-a", "device": "0"}, 2048)]


# --- the CLI's views -------------------------------------------------------------------------

ENTRY = {"seq": 1, "time": 1_700_000_000.0, "client": "loopback", "method": "POST",
         "route": "/v1/chat/completions", "family": "v1", "model": "tiny-alpha", "status": 200,
         "stream": True, "duration_ms": 41.5, "ttfb_ms": 3.25, "prompt_tokens": 12,
         "generated_tokens": 8, "cached_tokens": 3, "tokens_per_s": 95.25, "error": None}


def test_an_activity_row() -> None:
    line = activity_cli.format_row(activity_cli.row(ENTRY))
    for part in ("loopback", "POST /v1/chat/completions ~", "tiny-alpha", "200", "42ms",
                 "3ms", "12/8 (3c)", "95.2"):
        assert part in line
    failed = activity_cli.format_row(activity_cli.row({**ENTRY, "status": 503,
                                                       "error": "no model is loaded"}))
    assert failed.endswith("error: no model is loaded")


def test_top_screen_shows_state_progress_rates_and_requests() -> None:
    view = top.View()
    view.status = {"backend": {"state": "starting", "model": "tiny-beta",
                               "progress": {"phase": "loading", "percent": 50.0}},
                   "in_flight": 1, "idle": {"unloads_in_s": 125.0, "unloads_at": 1135.0,
                                            "text": "unloads in 2m 05s"}}
    view.entries.extend([{**ENTRY, "seq": n, "time": 1000.0 + n} for n in range(1, 4)])
    lines = top.screen(view, "http://127.0.0.1:1", 1010.0, 120, 40)
    text = "\n".join(lines)
    assert "tiny-beta  starting" in text
    assert "[" + "#" * 15 + "." * 15 + "] loading 50%" in text
    assert "unloads in 2m 05s" in text
    assert "in flight 1   requests/min 3   tokens/s 95.2" in text
    assert sum("/v1/chat/completions" in line for line in lines) == 3
    assert len(top.screen(view, "u", 1010.0, 120, 6)) == 6  # fits the terminal
    view.status["idle"] = {"pinned": True, "unloads_in_s": None, "unloads_at": None,
                           "text": "pinned — never unloaded for idleness"}
    assert "idle   pinned — never unloaded" in "\n".join(top.screen(view, "u", 1010.0, 120, 40))


def test_top_counts_the_idle_unload_down_without_skipping_a_second() -> None:
    """Polled once a second, the daemon answers a little late each time (0-90 ms here): drawn
    from the deadline at each tick, the countdown still shows every second, whatever the
    deadline's fraction of a second."""
    jitters = (0.0, 0.04, 0.09, 0.01, 0.06)
    for hundredths in range(100):
        deadline = 1030.0 + hundredths / 100
        view, tick, shown = top.View(), 1000.0, []
        for k in range(12):
            answered = tick + jitters[k % len(jitters)]
            view.status = {"backend": {"state": "ready"}, "idle": {
                "unloads_at": deadline, "unloads_in_s": round(deadline - answered, 1)}}
            line = next(ln for ln in top.summary(view, tick) if ln.startswith("idle"))
            shown.append(int(re.search(r"unloads in (\d+)s", line)[1]))
            tick = top.next_tick(tick, 1.0, answered)
        assert shown == list(range(shown[0], shown[0] - 12, -1)), (deadline, shown)


def test_top_ticks_at_a_fixed_rate_and_restarts_after_a_stall() -> None:
    assert top.next_tick(100.0, 1.0, 100.2) == 101.0  # not 101.2: a slow poll does not drift
    assert top.next_tick(100.0, 1.0, 103.5) == 103.5  # fell behind: the next frame is now
