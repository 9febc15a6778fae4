"""Browser defences for an unauthenticated localhost daemon.

The threat is a web page in the user's own browser: it can send requests to 127.0.0.1 but
cannot set the Host header of its own origin's requests to a loopback name unless it uses DNS
rebinding (then Host is the attacker's name), and its cross-site requests carry its Origin.
So: the Host must name this machine, and state-changing requests, everything under /v1
and /api (a page must not spend the user's GPU) and the model listings (`/models`, the
router-mode routes) must come without an Origin (CLI, SDKs, agents) or from a loopback origin
or one the user listed in daemon.allowed_origins.

Downloads (`POST /pull`, Ollama's `/api/pull`) write gigabytes to disk: any page on a loopback
dev server would be trusted for them, so they take no Origin at all (the CLI and scripts send
none) unless daemon.allow_browser_pull is true.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

from llmctl.core.config import is_loopback

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
# every request under these, reads too, must pass the Origin check: /v1 and the Ollama API
# serve generations, and Ollama's own OLLAMA_ORIGINS check covers all of its routes
GUARDED_PREFIXES = ("/v1/", "/api/", "/models/")
GUARDED_PATHS = frozenset(("/models",))  # the listing, with file paths and configs
DOWNLOADS = frozenset(("/pull", "/api/pull"))


class Guard:
    def __init__(self, bound_host: str, allowed_origins: list[str], allow_remote: bool,
                 allow_browser_pull: bool = False):
        self.allow_browser_pull = allow_browser_pull
        self.bound_host = bound_host.strip("[]").lower()
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.any_host = allow_remote and self.bound_host in ("0.0.0.0", "::")

    def host_allowed(self, host_header: str | None) -> bool:
        if not host_header or self.any_host:
            return True
        return self._host_allowed(host_header)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one Guard per worker, a handful of hosts
    def _host_allowed(self, host_header: str) -> bool:
        host = _hostname(host_header)
        return host is not None and (is_loopback(host) or host == self.bound_host
                                     or host.endswith(".localhost"))

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        if origin == "null":
            return False
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.hostname is not None and (
            is_loopback(parts.hostname) or parts.hostname.endswith(".localhost"))

    def origin_refusal(self, origin: str | None) -> str | None:
        """Why a request from this browser Origin is refused, or None when it may proceed."""
        if self.origin_allowed(origin):
            return None
        return (f"cross-site request from {origin!r} refused; add it to "
                "daemon.allowed_origins in config/default.yaml if you trust it")

    def check(self, environ: dict[str, Any]) -> str | None:
        """None when the request may proceed, else why it is refused."""
        if not self.host_allowed(environ.get("HTTP_HOST")):
            return (f"Host {environ.get('HTTP_HOST')!r} is not this machine; llmctld only "
                    "answers requests addressed to localhost (DNS rebinding protection)")
        path = environ["PATH_INFO"].rstrip("/") or "/"
        origin = environ.get("HTTP_ORIGIN")
        if path in DOWNLOADS and origin is not None:
            if self.allow_browser_pull:
                return self.origin_refusal(origin)
            return (f"{path} downloads models to disk and takes no request from a browser page "
                    f"(this one came from {origin!r}); run `llmctl pull`, or set "
                    "daemon.allow_browser_pull: true in config/default.yaml to allow pages "
                    "(loopback and daemon.allowed_origins ones)")
        if environ["REQUEST_METHOD"] not in SAFE_METHODS or path in GUARDED_PATHS or \
                environ["PATH_INFO"].startswith(GUARDED_PREFIXES):
            return self.origin_refusal(origin)
        return None


def _hostname(host_header: str) -> str | None:
    try:
        return urlsplit(f"//{host_header}").hostname
    except ValueError:
        return None
