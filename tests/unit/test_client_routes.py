"""The pure parts of the client-facing routes: which paths reach llama-server and which
writes are refused (native_routes), and the router-mode status and events derived from our
backend record (router_api)."""

from __future__ import annotations

from typing import Any

import pytest

from llmctl.core.state import Backend
from llmctl.daemon.api.router_api import Seen, router_status, transitions
from llmctl.daemon.relay.native_routes import backend_path, write_refusal


@pytest.mark.parametrize("path, upstream", [
    ("/infill", "/infill"), ("/completion", "/completion"), ("/slots", "/slots"),
    ("/slots/0", "/slots/0"), ("/backend/health", "/health"), ("/backend/metrics", "/metrics"),
    ("/backend/v1/models", "/v1/models"),
    ("/health", None), ("/models", None), ("/metrics", None), ("/backend", None),
    ("/infill/x", None), ("/api/tags", None),
])
def test_backend_path(path: str, upstream: str | None) -> None:
    assert backend_path(path) == upstream


@pytest.mark.parametrize("method, path, query, refused", [
    ("POST", "/props", "", True), ("GET", "/props", "", False),
    ("POST", "/slots/0", "action=save", True), ("POST", "/slots/3", "action=restore", True),
    ("POST", "/slots/0", "action=erase", False), ("GET", "/slots", "", False),
    ("POST", "/slots/0", "action=erase&action=save", True), ("POST", "/infill", "", False),
])
def test_write_refusal(method: str, path: str, query: str, refused: bool) -> None:
    reason = write_refusal(method, path, query)
    assert (reason is not None) is refused
    if reason:
        assert "daemon.allow_backend_writes: true" in reason


def backend(**fields: Any) -> Backend:
    return Backend(**fields)


def test_router_status() -> None:
    assert router_status("a", backend()) == {"value": "unloaded"}
    assert router_status("a", backend(state="ready", model="b")) == {"value": "unloaded"}
    assert router_status("a", backend(state="ready", model="a")) == {"value": "loaded"}
    loading = router_status("a", backend(state="starting", model="a",
                                         progress={"phase": "loading", "percent": 42.5}))
    assert loading == {"value": "loading", "progress": {
        "stages": ["spawning", "loading", "warming"], "current": "loading", "percent": 42.5,
        "value": 0.425}}
    unknown = router_status("a", backend(state="starting", model="a",
                                         progress={"phase": "loading", "percent": None}))
    assert "value" not in unknown["progress"]  # mmap: no made-up percentage
    failed = router_status("a", backend(state="failed", model="a", exit_code=1, error="boom"))
    assert failed == {"value": "unloaded", "failed": True, "exit_code": 1, "error": "boom"}
    assert router_status("a", backend(state="stopping", model="a")) == {"value": "unloaded"}


def test_transitions_of_a_switch() -> None:
    ready_a = backend(state="ready", model="a")
    starting_b = backend(state="starting", model="b", progress={"phase": "spawning",
                                                                "percent": 0.0})
    seen_a = Seen("a", router_status("a", ready_a))
    seen_b = Seen("b", router_status("b", starting_b))
    events = transitions(seen_a, seen_b, starting_b)
    assert [(e["model"], e["data"]["status"]) for e in events] == [("a", "unloaded"),
                                                                   ("b", "loading")]
    assert all(e["event"] == "status_change" for e in events)
    assert transitions(seen_b, seen_b, starting_b) == []  # nothing new, nothing sent
    stopped = backend()
    events = transitions(seen_b, Seen(None, router_status(None, stopped)), stopped)
    assert [(e["model"], e["data"]["status"]) for e in events] == [("b", "unloaded")]
