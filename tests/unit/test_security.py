"""llmctl.daemon.api.security.Guard: Host checks (DNS rebinding) and Origin checks (CSRF)."""

from __future__ import annotations

from typing import Any

import pytest

from llmctl.daemon.api.security import Guard


@pytest.fixture
def guard() -> Guard:
    return Guard("127.0.0.1", ["https://app.example.org/"], allow_remote=False)


def environ(method: str = "GET", path: str = "/status", host: str | None = "127.0.0.1:16384",
            origin: str | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path}
    if host is not None:
        env["HTTP_HOST"] = host
    if origin is not None:
        env["HTTP_ORIGIN"] = origin
    return env


# --- Host ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", [
    "localhost", "localhost:16384", "127.0.0.1", "127.0.0.1:16384", "[::1]", "[::1]:16384",
    "LOCALHOST:16384", "llmctl.localhost:16384",
])
def test_loopback_host_allowed(guard: Guard, host: str) -> None:
    assert guard.host_allowed(host)
    assert guard.check(environ(host=host)) is None


@pytest.mark.parametrize("host", [
    "evil.com", "evil.com:16384", "localhost.evil.com", "127.0.0.1.evil.com:16384",
    "192.168.1.5:16384", "[::1",
])
def test_foreign_host_refused(guard: Guard, host: str) -> None:
    assert not guard.host_allowed(host)
    refusal = guard.check(environ(host=host))
    assert refusal is not None
    assert repr(host) in refusal
    assert "DNS rebinding" in refusal


def test_request_without_host_header_allowed(guard: Guard) -> None:
    """HTTP/1.0 clients may omit Host; browsers never do, so this opens nothing."""
    assert guard.check(environ(host=None)) is None


def test_host_refused_even_for_safe_methods(guard: Guard) -> None:
    assert guard.check(environ("GET", "/status", host="evil.com")) is not None


def test_bound_host_name_allowed() -> None:
    guard = Guard("192.168.1.5", [], allow_remote=True)
    assert guard.host_allowed("192.168.1.5:16384")
    assert not guard.host_allowed("evil.com")


def test_wildcard_bind_with_allow_remote_accepts_any_host() -> None:
    assert Guard("0.0.0.0", [], allow_remote=True).host_allowed("my-server.lan:16384")
    assert not Guard("0.0.0.0", [], allow_remote=False).host_allowed("my-server.lan:16384")


# --- Origin -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/switch/tiny", "/stop", "/reload"])
def test_cross_site_post_refused(guard: Guard, path: str) -> None:
    refusal = guard.check(environ("POST", path, origin="https://evil.com"))
    assert refusal is not None
    assert "'https://evil.com'" in refusal
    assert "daemon.allowed_origins" in refusal


@pytest.mark.parametrize("origin", [
    "http://localhost:3000", "http://127.0.0.1:8080", "http://[::1]:5173",
    "https://localhost", "http://dev.localhost:3000",
])
def test_loopback_origin_allowed(guard: Guard, origin: str) -> None:
    assert guard.check(environ("POST", "/switch/tiny", origin=origin)) is None


def test_no_origin_allowed(guard: Guard) -> None:
    assert guard.check(environ("POST", "/switch/tiny")) is None
    assert guard.check(environ("POST", "/v1/chat/completions")) is None


def test_null_origin_refused(guard: Guard) -> None:
    assert not guard.origin_allowed("null")
    assert guard.check(environ("POST", "/stop", origin="null")) is not None


@pytest.mark.parametrize("origin", [
    "file://", "chrome-extension://abcdef", "http://localhost.evil.com", "http://127.0.0.1.nip.io",
])
def test_other_origins_refused(guard: Guard, origin: str) -> None:
    assert not guard.origin_allowed(origin)


@pytest.mark.parametrize("origin", ["https://app.example.org", "https://APP.example.org/"])
def test_listed_origin_allowed(guard: Guard, origin: str) -> None:
    assert guard.check(environ("POST", "/switch/tiny", origin=origin)) is None
    assert guard.check(environ("POST", "/v1/chat/completions", origin=origin)) is None


def test_listed_origin_is_exact(guard: Guard) -> None:
    assert not guard.origin_allowed("https://app.example.org.evil.com")
    assert not guard.origin_allowed("http://app.example.org")  # other scheme, other origin


def test_null_origin_can_be_listed_explicitly() -> None:
    assert Guard("127.0.0.1", ["null"], allow_remote=False).origin_allowed("null")


@pytest.mark.parametrize("method, path", [("GET", "/status"), ("GET", "/active"),
                                          ("HEAD", "/health"), ("OPTIONS", "/switch/tiny")])
def test_safe_control_requests_ignore_origin(guard: Guard, method: str, path: str) -> None:
    assert guard.check(environ(method, path, origin="https://evil.com")) is None


@pytest.mark.parametrize("method, path", [("GET", "/v1/models"),
                                          ("POST", "/v1/chat/completions"),
                                          ("OPTIONS", "/v1/chat/completions")])
def test_openai_routes_refuse_cross_site_even_for_get(guard: Guard, method: str,
                                                      path: str) -> None:
    refusal = guard.check(environ(method, path, origin="https://evil.com"))
    assert refusal is not None and "cross-site" in refusal
    assert guard.check(environ(method, path, origin="http://localhost:3000")) is None


@pytest.mark.parametrize("path", ["/models", "/models/", "/models/tiny", "/models/sse"])
def test_model_listings_refuse_cross_site_reads(guard: Guard, path: str) -> None:
    refusal = guard.check(environ("GET", path, origin="https://evil.example"))
    assert refusal is not None and "daemon.allowed_origins" in refusal
    assert guard.check(environ("GET", path, origin="http://localhost:5173")) is None
    assert guard.check(environ("GET", path)) is None


@pytest.mark.parametrize("path", ["/pull", "/api/pull", "/api/pull/"])
@pytest.mark.parametrize("method", ["POST", "OPTIONS"])
def test_downloads_take_no_origin_unless_allowed(guard: Guard, path: str, method: str) -> None:
    assert guard.check(environ(method, path)) is None  # the CLI, a script
    for origin in ("http://localhost:5173", "https://app.example.org", "https://evil.example"):
        refusal = guard.check(environ(method, path, origin=origin))
        assert refusal is not None and "daemon.allow_browser_pull" in refusal, origin
    allowing = Guard("127.0.0.1", ["https://app.example.org/"], allow_remote=False,
                     allow_browser_pull=True)
    assert allowing.check(environ(method, path, origin="http://localhost:5173")) is None
    assert allowing.check(environ(method, path, origin="https://evil.example")) is not None
