"""What a web page in the user's browser may not do, against a real llmctld: read the model
listings from another site, or start a download at all (even from a loopback dev server)
unless daemon.allow_browser_pull says so."""

from __future__ import annotations

from harness import Home

EVIL = {"Origin": "https://evil.example"}
DEV_SERVER = {"Origin": "http://localhost:5173"}  # any page of a local dev server


def test_model_listings_refuse_cross_site_reads(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("m")
    daemon = make_daemon()
    for path in ("/models", "/models/m"):
        r = daemon.get(path, headers=EVIL)
        assert r.status_code == 403, (path, r.text[:200])
        assert "daemon.allowed_origins" in r.json()["error"]["message"]
        assert daemon.get(path).ok and daemon.get(path, headers=DEV_SERVER).ok
    r = daemon.session.get(daemon.url + "/models/sse", headers=EVIL, timeout=10)
    assert r.status_code == 403


def test_downloads_take_no_browser_origin_unless_allowed(fake_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    pull = {"repo": "org/name:Q4_K_M"}
    for headers in (DEV_SERVER, EVIL):
        r = daemon.post("/pull", json=pull, headers=headers)
        assert r.status_code == 403, r.text[:300]
        message = r.json()["error"]["message"]
        assert "daemon.allow_browser_pull" in message and "llmctl pull" in message
        r = daemon.post("/api/pull", json={"model": "org/name"}, headers=headers)
        assert r.status_code == 403 and "daemon.allow_browser_pull" in r.json()["error"]
        preflight = daemon.session.options(daemon.url + "/pull", headers={
            **headers, "Access-Control-Request-Method": "POST"}, timeout=10)
        assert preflight.status_code == 403
    r = daemon.post("/pull", json={})  # no Origin (the CLI, a script): the guard lets it in
    assert r.status_code == 400 and "name the model" in r.json()["error"]["message"]
    fake_home.write_config(daemon={"allow_browser_pull": True})
    assert daemon.post("/reload").ok
    assert daemon.post("/pull", json={}, headers=DEV_SERVER).status_code == 400  # let in
    assert daemon.post("/pull", json={}, headers=EVIL).status_code == 403  # still cross-site
