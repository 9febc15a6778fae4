"""Every route added in round 2 obeys the browser guard: a foreign Host (DNS rebinding) is
refused on each, and a cross-site Origin is refused on each one that changes state or reaches
a model. Reads outside those (the dashboard, /metrics, /activity) answer a cross-site page
without CORS headers, so its script cannot read them. One daemon with a loaded fake model, so
a request that got through would reach a backend and answer 200."""

from __future__ import annotations

import pytest

from harness import Daemon, Home

EVIL = "http://evil.example"

# (method, path): routes that change state or reach a model
GUARDED = [
    ("POST", "/infill"), ("POST", "/completion"), ("POST", "/tokenize"),
    ("POST", "/detokenize"), ("POST", "/apply-template"), ("POST", "/embeddings"),
    ("POST", "/rerank"), ("GET", "/props"), ("GET", "/slots"), ("GET", "/backend/health"),
    ("POST", "/v1/messages"), ("POST", "/v1/responses"),
    ("POST", "/models/load"), ("POST", "/models/unload"),
    ("GET", "/api/tags"), ("GET", "/api/version"), ("POST", "/api/chat"),
    ("POST", "/api/generate"), ("POST", "/api/show"), ("GET", "/api/ps"),
    ("POST", "/pull"), ("POST", "/cache/clear"),
]
# reads a page may send but must not read
READS = ["/", "/metrics", "/activity", "/models/sse", "/cache"]


@pytest.fixture(scope="module")
def guarded_daemon(tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    from harness import Ports

    root = tmp_path_factory.mktemp("guard")
    home = Home(root / "home", Ports().take())
    home.use_fake_server(readyTimeoutMs=20_000, stopTimeoutMs=2_000)
    home.add_model("m")
    daemon = Daemon(home, root / "llmctld.log").start()
    assert daemon.switch("m").ok
    yield daemon
    daemon.stop()


@pytest.mark.parametrize(("method", "path"), GUARDED + [("GET", p) for p in READS])
def test_a_foreign_host_is_refused(guarded_daemon: Daemon, method: str, path: str) -> None:
    r = guarded_daemon.session.request(method, guarded_daemon.url + path, timeout=30,
                                       headers={"Host": "evil.example"}, json={})
    assert r.status_code == 403, (path, r.status_code, r.text[:200])


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_a_cross_site_origin_is_refused(guarded_daemon: Daemon, method: str, path: str) -> None:
    r = guarded_daemon.session.request(method, guarded_daemon.url + path, timeout=30,
                                       headers={"Origin": EVIL}, json={})
    assert r.status_code == 403, (path, r.status_code, r.text[:200])
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}


@pytest.mark.parametrize("path", ["/", "/metrics", "/activity"])
def test_a_cross_site_page_cannot_read_the_dashboard_or_metrics(guarded_daemon: Daemon,
                                                                path: str) -> None:
    r = guarded_daemon.get(path, headers={"Origin": EVIL})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}, path
