"""llama-server's own (non-/v1) routes, forwarded through the same proxy as /v1.

Code-completion plugins and llama.cpp-aware clients call llama-server at its root: `/infill`
(llama.vscode), `/completion`, `/tokenize`, `/props`... This module owns which of those paths
reach the active llama-server, and what is refused on the way:

- the paths in NATIVE_PATHS go to the backend unchanged;
- `/backend/<path>` goes to the backend's `/<path>`: llmctld keeps `/health`, `/models` and
  `/metrics` for itself, and this prefix reaches llama-server's own;
- requests that would let a client write files or reconfigure llama-server behind the daemon's
  back (`POST /props`, `POST /slots/<id>?action=save|restore`) are refused with 403 unless
  `daemon.allow_backend_writes` is true;
- a cross-site browser Origin is refused on every one of these routes, reads included: their
  answers (prompts in `/slots`, file paths in `/props`) are the user's business.

Everything else (in-flight accounting, the busy rule, default-model autoload, streaming) is
OpenAIProxy's, on a copy of the environ whose path is the backend's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from llmctl.daemon.api.config_view import ConfigView
from llmctl.daemon.api.errors import wsgi_error
from llmctl.daemon.relay.openai_proxy import OpenAIProxy

NATIVE_PATHS = frozenset((
    "/infill", "/completion", "/completions", "/tokenize", "/detokenize", "/apply-template",
    "/embedding", "/embeddings", "/rerank", "/reranking", "/props", "/slots",
))
BACKEND_PREFIX = "/backend"
SLOT_WRITE_ACTIONS = frozenset(("save", "restore"))


def backend_path(path: str) -> str | None:
    """The llama-server path a request for `path` goes to, or None if it is not ours."""
    if path in NATIVE_PATHS or path.startswith("/slots/"):
        return path
    if path.startswith(BACKEND_PREFIX + "/"):
        return path[len(BACKEND_PREFIX):]
    return None


def write_refusal(method: str, path: str, query: str) -> str | None:
    """Why a request that would change llama-server's files or settings is refused, or None."""
    if method == "POST" and path == "/props":
        return ("POST /props changes llama-server's global settings behind llmctld's back; "
                "set daemon.allow_backend_writes: true to allow it (and add --props to "
                "llama.extra_args)")
    if method == "POST" and path.startswith("/slots/"):
        actions = set(parse_qs(query).get("action", []))
        if actions & SLOT_WRITE_ACTIONS:
            return ("saving or restoring a slot writes and reads files on this machine; set "
                    "daemon.allow_backend_writes: true to allow it (and add --slot-save-path "
                    "to llama.extra_args)")
    return None


class NativeRoutes:
    def __init__(self, proxy: OpenAIProxy, config: ConfigView):
        self.proxy = proxy
        self.config = config  # its guard and settings are rebuilt by every refresh

    def handles(self, path: str) -> bool:
        return backend_path(path) is not None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = backend_path(environ["PATH_INFO"])
        assert path is not None
        cross_site = self.config.guard.origin_refusal(environ.get("HTTP_ORIGIN"))
        if cross_site is not None:
            return _refuse(start_response, cross_site)
        query = environ.get("QUERY_STRING", "")
        refusal = write_refusal(environ["REQUEST_METHOD"], path, query)
        if refusal is not None and \
                not self.config.config.data["daemon"]["allow_backend_writes"]:
            return _refuse(start_response, refusal)
        if path != environ["PATH_INFO"]:
            environ = {**environ, "PATH_INFO": path,
                       "RAW_URI": path + ("?" + query if query else "")}
        return self.proxy(environ, start_response)


def _refuse(start_response: Any, message: str) -> list[bytes]:
    status, headers, body = wsgi_error(403, "forbidden", message, "permission_error")
    start_response(status, headers)
    return [body]
