"""The /api/* routes: which Ollama route is served, translated or refused, and how.

app.py hands every /api/* request here after the Host/Origin guard (which treats /api/ like
/v1/: a cross-site page may not even read it). Answers and errors use Ollama's shapes: JSON
objects, `{"error": "..."}` with a fitting HTTP status, NDJSON streams whose failures are an
`{"error": ...}` line.

Generations and embeddings go through OpenAIProxy.open, so they count as in flight, wait for a
load, load the default model, and are cut by a forced switch exactly like /v1 requests.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from llmctl import __version__
from llmctl.daemon.admission.gate import Busy, Unavailable
from llmctl.daemon.api.hub import Hub
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ollama import catalog
from llmctl.daemon.ollama.stream import NDJSON, Translation
from llmctl.daemon.ollama.translate import (
    BadRequest,
    Upstream,
    bare_name,
    chat_answer,
    chat_request,
    embed_answer,
    embed_request,
    generate_answer,
    generate_request,
    model_name,
    now_iso,
    parse_keep_alive,
    stream_wanted,
    upstream_error,
)
from llmctl.daemon.relay import refusals
from llmctl.daemon.relay.bodies import BodyError
from llmctl.daemon.relay.openai_proxy import OpenAIProxy, Relay, upstream_failure

log = logging.getLogger("llmctld.ollama")

# The Ollama version we answer to /api/version: clients gate features on it (VS Code
# Copilot wants a recent, numeric one); this is the API level the facade follows.
OLLAMA_VERSION = "0.12.0"

Handler = Callable[["OllamaAPI", dict[str, Any], Any], Iterable[bytes]]


def _json(start_response: Any, status: int, data: Any,
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps(data, separators=(",", ":")).encode()
    start_response(f"{status} {http.client.responses.get(status, 'Error')}",
                   [("Content-Type", "application/json; charset=utf-8"),
                    ("Content-Length", str(len(body))), *(extra or [])])
    return [body]


def _request(data: bytes | None) -> dict[str, Any]:
    """A request body as the JSON object Ollama routes take."""
    if not data or not data.strip():
        return {}
    try:
        request = json.loads(data, parse_constant=_not_json, parse_float=_finite)
    except ValueError as e:
        raise BadRequest(f"the request body is not JSON ({e})") from None
    if not isinstance(request, dict):
        raise BadRequest("the request body must be a JSON object")
    return request


def _not_json(name: str) -> Any:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON (and Ollama) does not."""
    raise BadRequest(f"the request body is not JSON: {name} is not a JSON number (numbers "
                     "must be finite)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise BadRequest(f"the request body has a number out of range: {text}")
    return value


def ollama_error(start_response: Any, status: int, message: str) -> list[bytes]:
    return _json(start_response, status, {"error": message})


def _read_all(relay: Relay) -> bytes:
    try:
        return b"".join(relay)
    finally:
        relay.close()


class OllamaAPI:
    def __init__(self, hub: Hub, proxy: OpenAIProxy):
        self.hub, self.proxy = hub, proxy
        self._context: tuple[Any, int] | None = None  # (backend identity, per-slot n_ctx)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path, method = environ["PATH_INFO"].rstrip("/"), environ["REQUEST_METHOD"]
        if path in REFUSED or path.startswith("/api/blobs/"):
            reason = REFUSED.get(path) or REFUSED["/api/create"]
            return ollama_error(start_response, 501,
                                reason.format(models=self.hub.paths.models_dir))
        route = ROUTES.get(path)
        if route is None:
            return ollama_error(start_response, 404, f"no Ollama route {path}; llmctl serves "
                                f"{', '.join(sorted(ROUTES))} (see docs/ollama.md)")
        methods, handler = route
        if method == "HEAD" and "GET" in methods:
            method = "GET"
        if method not in methods:
            return ollama_error(start_response, 405, f"{method} is not allowed on {path}; "
                                f"use {' or '.join(methods)}")
        received = None
        try:
            if method != "GET":
                cap = self.hub.config.limits.max_body  # parsed whole, so in memory
                received = self.hub.bodies.receive(environ, cap, cap)
            request = _request(received.data if received is not None else None)
            return handler(self, request, start_response)
        except BodyError as e:  # answered at once: the connection closes, the rest unread
            return _json(start_response, e.status, {"error": e.message}, [
                ("Connection", "close"),
                *([("Retry-After", str(e.retry_after))] if e.retry_after else [])])
        except BadRequest as e:
            return ollama_error(start_response, e.status, e.message)
        except Unavailable as e:
            return ollama_error(start_response, e.status, e.message)
        except (OSError, http.client.HTTPException) as e:
            return ollama_error(start_response, 502, upstream_failure(e))
        except Exception as e:  # a bug: still Ollama's JSON error shape, never HTML
            log.exception("%s %s failed", method, path)
            return ollama_error(start_response, 500, f"llmctld could not answer {path} "
                                f"({e.__class__.__name__}: {e}); see llmctld's log")
        finally:
            if received is not None:  # sent upstream (or refused) by now
                received.close()

    # --- about models ------------------------------------------------------------------------

    def on_version(self, request: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return _json(start_response, 200, {"version": OLLAMA_VERSION, "llmctl": __version__})

    def on_tags(self, request: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.hub.config.refresh()
        return _json(start_response, 200, {"models": [
            catalog.summary(name, entry) for name, entry in catalog.listed(self.hub)]})

    def on_show(self, request: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        name = model_name(request)
        self.hub.config.refresh()
        known, entry = catalog.find(self.hub, name)
        if not known:
            return ollama_error(start_response, 404, f"model {name!r} not found; llmctl "
                                "serves `local` (the active model) and the ids `llmctl models` "
                                "lists")
        return _json(start_response, 200, catalog.show(entry))

    def on_ps(self, request: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return _json(start_response, 200, {"models": catalog.running(self.hub)})

    def on_pull(self, request: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """A pull of a model llmctl already has succeeds (clients pull before they use a
        model); anything else is for `llmctl pull`."""
        name = model_name(request)
        self.hub.config.refresh()
        known, _ = catalog.find(self.hub, name)
        if not known:
            return ollama_error(start_response, 501, (
                f"llmctl does not download from the Ollama library, and has no model "
                f"{name!r}. Fetch a GGUF from Hugging Face with `llmctl pull <repo>`, or place "
                f"one under {self.hub.paths.models_dir}, then use its id (`llmctl models`)"))
        if not stream_wanted(request):
            return _json(start_response, 200, {"status": "success"})
        start_response("200 OK", [("Content-Type", "application/x-ndjson")])
        return [b'{"status":"success"}\n']

    # --- generations -------------------------------------------------------------------------

    def on_chat(self, request: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        up = chat_request(request)
        return self._generate(request, up, "chat", not request.get("messages"),
                              start_response)

    def on_generate(self, request: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        up = generate_request(request)
        empty = not request.get("prompt") and not request.get("suffix")
        return self._generate(request, up, "generate", empty, start_response)

    def _generate(self, request: dict[str, Any], up: Upstream, kind: str, empty: bool,
                  start_response: Any) -> Iterable[bytes]:
        name = model_name(request)
        keep_alive = parse_keep_alive(request.get("keep_alive"))
        started = time.monotonic()
        if empty:  # Ollama's way to load (or, with keep_alive 0, unload) a model
            return self._load_or_unload(kind, name, keep_alive, start_response)
        if up.num_ctx is not None:
            self._check_context(up.num_ctx, name)
        relay, waited = self._open(up, name, keep_alive)
        status = relay.response.status
        if status != 200 or not up.stream:
            payload = _read_all(relay)
            if status != 200:
                return self._upstream_error(start_response, status, payload)
            data = self._parse(payload)
            answer = (chat_answer(data, name, started, waited, up.think) if kind == "chat"
                      else generate_answer(data, up.shape, name, started, waited, up.think))
            return _json(start_response, 200, answer)
        start_response("200 OK", [("Content-Type", "application/x-ndjson")])
        return NDJSON(relay, Translation(kind, up.shape, name, started, up.think, waited))

    def _upstream_error(self, start_response: Any, status: int, payload: bytes
                        ) -> list[bytes]:
        """llama-server's error, in Ollama's shape: a deterministic refusal (refusals.py) as a
        400 that names the model and the fix, anything else with llama-server's status."""
        model = self.hub.backend.backend.model
        entry = self.hub.config.entry(model)
        refusal = refusals.classify(status, payload, model, str(entry.config_file)
                                    if entry is not None and entry.config_file else None)
        if refusal is None:
            return ollama_error(start_response, status, upstream_error(status, payload))
        return ollama_error(start_response, refusal.status, refusal.message)

    def _load_or_unload(self, kind: str, name: str, keep_alive: float | None,
                        start_response: Any) -> Iterable[bytes]:
        done: dict[str, Any] = {"model": name, "created_at": now_iso(), "done": True}
        done.update({"message": {"role": "assistant", "content": ""}} if kind == "chat"
                    else {"response": ""})
        if keep_alive == 0:  # now, like `llmctl stop`, if it is the model that is loaded
            known, entry = catalog.find(self.hub, name)
            if not known:
                return ollama_error(start_response, 404, f"model {name!r} not found; llmctl "
                                    "serves `local` (the active model) and the ids `llmctl "
                                    "models` lists")
            backend = self.hub.backend.backend
            if entry is None or not backend.active or entry.id != backend.model:
                return _json(start_response, 200, {**done, "done_reason": "unload"})  # as Ollama
            try:
                reply = self.hub.gate.begin(p.Stop, False).reply()
            except Busy as e:
                return ollama_error(start_response, 409, (
                    f"cannot unload {name}: {e.in_flight} other request(s) in flight; retry "
                    "when they finish, or cut them off with `llmctl stop --force`"))
            if not reply.ok:
                return ollama_error(start_response, 500, (reply.error or {}).get(
                    "message") or "unloading failed; see `llmctl status`")
            return _json(start_response, 200, {**done, "done_reason": "unload"})
        with self.hub.gate.acquire(bare_name(name)) as lease:  # loads it, like a request
            lease.keep_alive = keep_alive
        return _json(start_response, 200, {**done, "done_reason": "load"})

    def _open(self, up: Upstream, name: str, keep_alive: float | None) -> tuple[Relay, float]:
        return self.proxy.open("POST", up.path, up.body, requested=bare_name(name),
                               keep_alive=keep_alive)

    @staticmethod
    def _parse(payload: bytes) -> dict[str, Any]:
        try:
            data = json.loads(payload)
        except ValueError:
            raise BadRequest(f"llama-server answered with something that is not JSON: "
                             f"{payload[:200]!r}", 502) from None
        if not isinstance(data, dict):
            raise BadRequest("llama-server answered with JSON that is not an object", 502)
        return data

    def _check_context(self, num_ctx: int, name: str) -> None:
        """A client that asks for more context than the model was loaded with gets told how
        to load it with more, instead of a silent truncation later."""
        loaded = self._loaded_context(name)
        if loaded and num_ctx > loaded:
            model = self.hub.backend.backend.model
            entry = self.hub.config.entry(model)
            where = f" in {entry.config_file}" if entry is not None else ""
            raise BadRequest(
                f"options.num_ctx {num_ctx} is larger than the context {model} is loaded with "
                f"({loaded} tokens per request). Raise llama.ctx_size{where} and run `llmctl "
                f"switch {model}`, or ask for num_ctx <= {loaded}")

    def _loaded_context(self, name: str) -> int:
        backend = self.hub.backend.backend
        identity = (backend.pid, backend.generation)
        if self._context is not None and self._context[0] == identity:
            return self._context[1]
        relay, _ = self.proxy.open("GET", "/props", None, requested=bare_name(name))
        payload = _read_all(relay)
        try:
            settings = json.loads(payload).get("default_generation_settings") or {}
            n_ctx = int(settings.get("n_ctx") or 0)
        except (ValueError, AttributeError, TypeError):
            n_ctx = 0
        backend = self.hub.backend.backend  # the request above may have loaded a model
        self._context = ((backend.pid, backend.generation), n_ctx)
        return n_ctx

    # --- embeddings ----------------------------------------------------------------------------

    def _embed(self, request: dict[str, Any], start_response: Any, legacy: bool,
               ) -> Iterable[bytes]:
        up = embed_request(request, legacy)
        name = model_name(request)
        keep_alive = parse_keep_alive(request.get("keep_alive"))
        started = time.monotonic()
        relay, waited = self._open(up, name, keep_alive)
        payload = _read_all(relay)
        status = relay.response.status
        if status != 200:
            message = upstream_error(status, payload)
            if "pooling type" in message.lower():
                message += " (add --pooling mean to llama.extra_args of its config.yaml)"
                return ollama_error(start_response, status, message)
            return self._upstream_error(start_response, status, payload)
        answer = embed_answer(self._parse(payload), up, name, started, waited)
        return _json(start_response, 200, answer)

    def on_embed(self, request: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self._embed(request, start_response, legacy=False)

    def on_embeddings(self, request: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self._embed(request, start_response, legacy=True)


ROUTES: dict[str, tuple[tuple[str, ...], Handler]] = {
    "/api/version": (("GET",), OllamaAPI.on_version),
    "/api/tags": (("GET",), OllamaAPI.on_tags),
    "/api/show": (("POST",), OllamaAPI.on_show),
    "/api/ps": (("GET",), OllamaAPI.on_ps),
    "/api/pull": (("POST",), OllamaAPI.on_pull),
    "/api/chat": (("POST",), OllamaAPI.on_chat),
    "/api/generate": (("POST",), OllamaAPI.on_generate),
    "/api/embed": (("POST",), OllamaAPI.on_embed),
    "/api/embeddings": (("POST",), OllamaAPI.on_embeddings),
}

# Ollama routes llmctl does not serve, and what to do instead ({models}: the models directory)
REFUSED = {
    "/api/push": "llmctl does not upload models; there is no llmctl equivalent of /api/push",
    "/api/create": ("llmctl does not build models from a Modelfile: place the GGUF (or a "
                    "symlink to it) in a directory under {models} with a config.yaml, or run "
                    "`llmctl add <file.gguf>`; then `llmctl reload`"),
    "/api/copy": ("llmctl does not copy models: to serve one under another name, list that "
                  "name in `aliases:` in the model's config.yaml (under {models}), then "
                  "`llmctl reload`"),
    "/api/delete": ("llmctl never deletes model files: remove the model's directory under "
                    "{models} yourself, then `llmctl reload`"),
}
