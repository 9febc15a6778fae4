"""The one HTTP client for llmctld's control API, used by the CLI (and usable from scripts).

Finding the daemon: LLMCTL_HOST/LLMCTL_PORT when set, else the address the running daemon
recorded in state.json (so a port set in config/default.yaml is found too), else
127.0.0.1:16384. Errors come back as exceptions that carry the daemon's code and message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import requests

from llmctl.core.paths import (
    DEFAULT_DAEMON_HOST,
    DEFAULT_DAEMON_PORT,
    Paths,
    base_url,
    env_address,
)

CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 30.0


class ClientError(Exception):
    code = "error"


class DaemonNotRunning(ClientError):
    code = "not_running"

    def __init__(self, url: str):
        self.url = url
        super().__init__(f"llmctld is not running at {url} — start it with `llmctld` "
                         "(or set LLMCTL_HOST/LLMCTL_PORT if it listens elsewhere)")


class ApiError(ClientError):
    def __init__(self, status: int, body: dict[str, Any]):
        found = body.get("error")
        err: dict[str, Any] = found if isinstance(found, dict) else {}
        self.status = status
        self.code: str = err.get("code") or f"http_{status}"
        self.message: str = err.get("message") or f"HTTP {status}"
        self.data = err
        super().__init__(self.message)


def daemon_url() -> str:
    try:
        host, port = env_address()
    except ValueError as e:
        raise ClientError(str(e)) from None
    if host is not None or port is not None:
        return base_url(host or DEFAULT_DAEMON_HOST, DEFAULT_DAEMON_PORT if port is None else port)
    try:
        with open(Paths.from_env().state_file, "rb") as f:
            daemon = json.load(f).get("daemon") or {}
        recorded_host, recorded_port = daemon.get("host"), daemon.get("port")
        if isinstance(recorded_host, str) and isinstance(recorded_port, int):
            if recorded_host in ("0.0.0.0", "::"):
                recorded_host = "127.0.0.1"
            return base_url(recorded_host, recorded_port)
    except (OSError, ValueError, AttributeError):
        pass
    return base_url(DEFAULT_DAEMON_HOST, DEFAULT_DAEMON_PORT)


class Client:
    def __init__(self, url: str | None = None):
        self.url = (url or daemon_url()).rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # never route localhost through an HTTP proxy

    def _request(self, method: str, path: str, *, stream: bool = False,
                 timeout: float | None = READ_TIMEOUT, params: dict[str, Any] | None = None,
                 ) -> requests.Response:
        try:
            response = self.session.request(
                method, self.url + path, params={k: v for k, v in (params or {}).items() if v},
                stream=stream, timeout=(CONNECT_TIMEOUT, timeout))
        except requests.ConnectionError:
            raise DaemonNotRunning(self.url) from None
        except requests.Timeout:
            raise ClientError(f"llmctld at {self.url} did not answer in time") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": {"message": response.text.strip()[:500]}}
            raise ApiError(response.status_code, body)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params).json()

    def post(self, path: str, *, timeout: float | None = READ_TIMEOUT, **params: Any) -> Any:
        return self._request("POST", path, timeout=timeout, params=params).json()

    def status(self) -> dict[str, Any]:
        return self.get("/status")

    def models(self) -> dict[str, Any]:
        return self.get("/models")

    def model(self, model_id: str) -> dict[str, Any]:
        return self.get(f"/models/{quote(model_id, safe='')}")

    def active(self) -> dict[str, Any]:
        return self.get("/active")

    def stop(self, force: bool = False) -> dict[str, Any]:
        return self.post("/stop", timeout=None, force=int(force))

    def reload(self) -> dict[str, Any]:
        return self.post("/reload")

    def switch(self, query: str, force: bool = False, pin: bool = False, fit: bool = False,
               fit_check: bool = True) -> Iterator[dict[str, Any]]:
        """Switch and yield the daemon's progress events, ending with `ready` or `error`.
        No read timeout: the daemon bounds the load (server.readyTimeoutMs)."""
        response = self._request("POST", f"/switch/{quote(query, safe='')}", stream=True,
                                 timeout=None, params={"stream": 1, "force": int(force),
                                                                 "pin": int(pin), "fit": int(fit),
                                                                 "no_fit_check": int(not fit_check)})
        with response:
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def logs(self, model: str | None, lines: int, follow: bool) -> Iterator[bytes]:
        path = f"/logs/{quote(model, safe='')}" if model else "/logs"
        response = self._request("GET", path, stream=True,
                                 timeout=None if follow else READ_TIMEOUT,
                                 params={"lines": str(lines), "follow": int(follow)})
        with response:
            yield from response.iter_content(chunk_size=None)

    def activity(self, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        return self.get("/activity", since=str(since),
                        limit=None if limit is None else str(limit))

    def follow_activity(self, since: int = 0, limit: int | None = None,
                        ) -> Iterator[dict[str, Any]]:
        """Each new activity entry as it happens (after the newest `limit` already there).
        No read timeout: the daemon writes a blank line every 15 s of quiet."""
        response = self._request("GET", "/activity", stream=True, timeout=None, params={
            "since": str(since), "limit": None if limit is None else str(limit), "follow": 1})
        with response:
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)
