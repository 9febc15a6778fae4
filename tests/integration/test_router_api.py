"""Router-style model management (the API of llama-server's router mode) on llmctld: the
router's fields in GET /models beside ours, POST /models/load = switch, POST /models/unload =
stop, and the GET /models/sse feed with the real load progress, against a REAL llama-server."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from harness import Daemon, Home, wait_for

pytestmark = pytest.mark.real_backend

EVIL = {"Origin": "https://evil.example"}


class EventFeed:
    """GET /models/sse read in a thread, as a router client keeps it open."""

    def __init__(self, daemon: Daemon):
        self.response = daemon.session.get(daemon.url + "/models/sse", stream=True, timeout=60)
        assert self.response.status_code == 200
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.events: list[dict[str, Any]] = []
        self.comments = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        wait_for(lambda: self.comments, 10, "the feed's first comment")

    def _read(self) -> None:
        try:
            for line in self.response.iter_lines():
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[len(b"data: "):]))
                elif line.startswith(b":"):
                    self.comments += 1
        except (requests.RequestException, AttributeError, ValueError):
            pass  # closed by the test

    def statuses(self, model: str) -> list[str]:
        return [e["data"]["status"] for e in self.events if e["model"] == model]

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def router_home(real_home: Home, slow_gguf: Path) -> Home:
    real_home.add_model("slow", slow_gguf, aliases=["sloth"])
    return real_home


def model(daemon: Daemon, model_id: str) -> dict[str, Any]:
    return next(m for m in daemon.get("/models").json()["data"] if m["id"] == model_id)


def test_models_list_has_the_routers_fields_beside_ours(router_home: Home,
                                                        make_daemon) -> None:
    daemon = make_daemon()
    listing = daemon.get("/models").json()
    assert listing["object"] == "list" and listing["data"] == listing["models"]
    for entry in listing["data"]:
        assert entry["object"] == "model" and entry["owned_by"] == "llmctl"
        assert entry["status"] == {"value": "unloaded"} and "tags" in entry
        assert {"name", "available", "active", "gguf"} <= set(entry)  # ours are still there
    assert model(daemon, "slow")["aliases"] == ["sloth"]
    assert daemon.switch("tiny-alpha").status_code == 200
    assert model(daemon, "tiny-alpha")["status"] == {"value": "loaded"}
    assert model(daemon, "tiny-beta")["status"] == {"value": "unloaded"}
    ids = daemon.cli("models", "--ids")
    assert ids.returncode == 0 and ids.stdout.split() == ["slow", "tiny-alpha", "tiny-beta"]


def test_load_unload_and_the_event_feed_with_progress(router_home: Home,
                                                      make_daemon) -> None:
    daemon = make_daemon()
    feed = EventFeed(daemon)
    try:
        r = daemon.post("/models/load", json={"model": "sloth"})  # by its alias
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True, "model": "slow", "already_loaded": False}
        # answered once llama-server is starting: the load goes on, visible in /models
        wait_for(lambda: model(daemon, "slow")["status"]["value"] == "loaded", 60,
                 "slow to be loaded", daemon.log)
        wait_for(lambda: "loaded" in feed.statuses("slow"), 10, "the loaded event")
        loading = [e["data"] for e in feed.events
                   if e["model"] == "slow" and e["data"]["status"] == "loading"]
        assert loading, feed.events
        values = [d["progress"]["value"] for d in loading if "value" in d.get("progress", {})]
        assert any(0 < v < 1 for v in values), loading  # a real percentage, read as it loaded
        assert values == sorted(values)
        assert all(e["event"] == "status_change" for e in feed.events)
        assert feed.statuses("slow")[-1] == "loaded"

        again = daemon.post("/models/load", json={"model": "slow"}).json()
        assert again == {"success": True, "model": "slow", "already_loaded": True}

        # loading another model switches: the feed says the first one went away
        assert daemon.post("/models/load", json={"model": "tiny-alpha"}).status_code == 200
        wait_for(lambda: "loaded" in feed.statuses("tiny-alpha"), 30, "tiny-alpha loaded")
        assert feed.statuses("slow")[-1] == "unloaded"

        r = daemon.post("/models/unload", json={"model": "tiny-alpha"})
        assert r.status_code == 200 and r.json() == {"success": True, "model": "tiny-alpha"}
        assert daemon.backend()["state"] == "stopped"
        wait_for(lambda: feed.statuses("tiny-alpha")[-1] == "unloaded", 10, "unloaded event")
    finally:
        feed.close()


def test_load_and_unload_errors(router_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    r = daemon.post("/models/load", json={"model": "tiny"})
    assert r.status_code == 404
    assert set(r.json()["error"]["suggestions"]) >= {"tiny-alpha", "tiny-beta"}
    r = daemon.post("/models/load", data="not json", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and '{"model": "<id>"}' in r.json()["error"]["message"]
    r = daemon.post("/models/unload", json={"model": "tiny-alpha"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_running"
    assert daemon.post("/models/unload", json={"model": "nope"}).status_code == 404


def test_load_and_unload_keep_the_busy_rule(fake_home: Home, make_daemon) -> None:
    """(a scripted fake llama-server holds a stream open for as long as the test needs)"""
    fake_home.add_model("talker", script={"chunk_interval": 0.05, "stream_chunks": 60})
    fake_home.add_model("other")
    daemon = make_daemon()
    assert daemon.post("/models/load", json={"model": "talker"}).status_code == 200
    daemon.wait_state("ready")
    stream = daemon.post("/v1/chat/completions", stream=True, json={
        "model": "local", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    lines = stream.iter_lines()
    assert next(lines)
    for r in (daemon.post("/models/load", json={"model": "other"}),
              daemon.post("/models/unload", json={"model": "talker"})):
        assert r.status_code == 409 and r.json()["error"]["code"] == "busy"
        assert r.json()["error"]["in_flight"] == 1
    assert [line for line in lines if line][-1] == b"data: [DONE]"
    assert daemon.backend()["model"] == "talker"
    wait_for(lambda: daemon.status()["in_flight"] == 0, 5, "in-flight count to drop")
    assert daemon.post("/models/load", json={"model": "other"}).status_code == 200


def test_cross_site_pages_cannot_drive_or_watch_models(router_home: Home,
                                                       make_daemon) -> None:
    daemon = make_daemon()
    for r in (daemon.post("/models/load", json={"model": "tiny-alpha"}, headers=EVIL),
              daemon.post("/models/unload", json={"model": "tiny-alpha"}, headers=EVIL),
              daemon.get("/models/sse", headers=EVIL, timeout=10)):
        assert r.status_code == 403, r.text
        assert "daemon.allowed_origins" in r.json()["error"]["message"]
    assert daemon.backend()["state"] == "stopped"
    ok = daemon.post("/models/load", json={"model": "tiny-alpha"},
                     headers={"Origin": "http://localhost:3000"})
    assert ok.status_code == 200
