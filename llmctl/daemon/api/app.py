"""The WSGI application of the proxy worker: the control API and the /v1 entry point.

/v1/* (except /v1/models) goes straight to openai_proxy on the raw environ, llama-server's
native routes (native_routes) to the same proxy, /api/* to the Ollama facade (daemon/ollama/);
everything else is routed with werkzeug. Control responses are JSON; errors are
{"error": {"code", "message", "type", ...}} with a fitting HTTP status.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote

import gevent
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from llmctl import __version__
from llmctl.core.aliases import name_index
from llmctl.core.catalog import ModelEntry
from llmctl.core.config import MODEL_ID_RE, model_workers
from llmctl.core.log_file import read_log_tail
from llmctl.core.resolve import resolve
from llmctl.daemon import ui
from llmctl.daemon.admission.gate import Busy
from llmctl.daemon.api.cache_route import cache_response
from llmctl.daemon.api.errors import error_body
from llmctl.daemon.api.hub import Hub
from llmctl.daemon.api.listing import encode_items, encode_object
from llmctl.daemon.api.router_api import RouterApi, routed_models, router_fields
from llmctl.daemon.backend.tool_calls import no_tool_calls
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.commands import Pending
from llmctl.daemon.kvcache.view import kv_view
from llmctl.daemon.observe import routes as observe_routes
from llmctl.daemon.relay import anthropic_stream
from llmctl.daemon.relay.bodies import BodyError, control_body
from llmctl.daemon.relay.native_routes import NativeRoutes
from llmctl.daemon.relay.openai_proxy import OpenAIProxy

MAX_CONTROL_BODY = 64 * 1024
LOG_LINES_MAX = 10_000

ROUTES = Map([
    Rule("/health", endpoint="health", methods=["GET"]),
    Rule("/status", endpoint="status", methods=["GET"]),
    Rule("/models", endpoint="models", methods=["GET"]),
    Rule("/models/<path:model>", endpoint="model", methods=["GET"]),
    Rule("/models/load", endpoint="router_load", methods=["POST"]),
    Rule("/models/unload", endpoint="router_unload", methods=["POST"]),
    Rule("/models/sse", endpoint="router_events", methods=["GET"]),
    Rule("/active", endpoint="active", methods=["GET"]),
    Rule("/switch/<path:model>", endpoint="switch", methods=["POST"]),
    Rule("/stop", endpoint="stop", methods=["POST"]),
    Rule("/logs", endpoint="logs", methods=["GET"]),
    Rule("/logs/<path:model>", endpoint="logs", methods=["GET"]),
    Rule("/reload", endpoint="reload", methods=["POST"]),
    Rule("/restart-proxy", endpoint="restart_proxy", methods=["POST"]),
    Rule("/pull", endpoint="pull", methods=["POST"]),
    Rule("/cache", endpoint="cache", methods=["GET"]),
    Rule("/cache/clear", endpoint="cache_clear", methods=["POST"]),
    Rule("/v1/models", endpoint="v1_models", methods=["GET"]),
    Rule("/metrics", endpoint="metrics", methods=["GET"]),
    Rule("/activity", endpoint="activity", methods=["GET"]),
    Rule("/", endpoint="dashboard", methods=["GET"]),
    Rule("/ui/<asset>", endpoint="dashboard", methods=["GET"]),
], strict_slashes=False)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, indent=None) + "\n", status=status,
                    mimetype="application/json")


def error(status: int, code: str, message: str, **extra: Any) -> Response:
    return Response(error_body(status, code, message, **extra) + b"\n", status=status,
                    mimetype="application/json")


def _ollama_api() -> Any:
    """The Ollama facade's package, imported on first use: most users never call it, and a
    proxy worker's start (after a restart: a gap in service) need not wait for it."""
    from llmctl.daemon import ollama

    return ollama


class App:
    def __init__(self, hub: Hub):
        self.hub = hub
        self.proxy = OpenAIProxy(hub)
        self.native = NativeRoutes(self.proxy, hub.config)
        self.router = RouterApi(hub, failure=_reply_response)
        self._ollama: Any = None  # the Ollama facade, built by the first /api/ request
        self.started = time.time()
        self.observer: Any = None  # daemon/observe/observer.py's, when metrics or activity are on

    def ollama(self) -> Any:
        """The Ollama facade, built by the first /api/ request (a proxy start skips it)."""
        if self._ollama is None:
            self._ollama = _ollama_api().OllamaAPI(self.hub, self.proxy)
        return self._ollama

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        guard = self.hub.config.guard  # rebuilt by every refresh (reload, SIGHUP)
        refusal = guard.check(environ)
        if refusal is not None:
            if environ["PATH_INFO"].startswith("/api/"):
                return _ollama_api().ollama_error(start_response, 403, refusal)
            return error(403, "forbidden", refusal)(environ, start_response)
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None:
            allowed = guard.origin_allowed(origin)
            if environ["REQUEST_METHOD"] == "OPTIONS":
                if not allowed:
                    return error(403, "forbidden", f"origin {origin!r} is not allowed; add it "
                                 "to daemon.allowed_origins")(environ, start_response)
                return _preflight(environ, start_response, origin)
            if allowed:  # let that page read the answer; others get no CORS headers
                start_response = _with_cors(start_response, origin)
        path = environ["PATH_INFO"]
        if path == "/v1/messages":  # a stream's missing message_start is put back
            return anthropic_stream.serve(self.proxy, environ, start_response,
                                          lambda: self.hub.backend.backend.model)
        if path.startswith("/v1/") and path != "/v1/models":
            return self.proxy(environ, start_response)
        if self.native.handles(path):
            return self.native(environ, start_response)
        if path.startswith("/api/"):
            return self.ollama()(environ, start_response)
        try:  # whole and capped however it is framed (a chunked body too)
            environ = control_body(self.hub.bodies, environ, MAX_CONTROL_BODY)
        except BodyError as e:
            return _body_refused(e)(environ, start_response)
        request = Request(environ)
        try:
            endpoint, args = ROUTES.bind_to_environ(environ).match()
            response = getattr(self, f"on_{endpoint}")(request, **args)
        except NotFound:
            response = error(404, "not_found", f"no route {path}; see the API reference in the "
                             "README (GET /status, /models, POST /switch/<model>, /v1/...)")
        except MethodNotAllowed as e:
            response = error(405, "method_not_allowed",
                             f"{request.method} is not allowed on {path}; use "
                             f"{', '.join(sorted(e.valid_methods or []))}")
        except HTTPException as e:
            response = error(e.code or 400, "bad_request", e.description or str(e))
        return response(environ, start_response)

    # --- read routes ---------------------------------------------------------------------------

    def on_health(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    def on_status(self, request: Request) -> Response:
        hub = self.hub
        record = hub.backend.backend
        backend = record.public()
        now = time.time()
        if record.state == "ready" and record.ready_at:
            backend["uptime_s"] = round(now - record.ready_at, 1)
        info = hub.daemon_info
        return json_response({
            "daemon": {"pid": info["pid"], "version": __version__,
                       "host": info["host"], "port": info["port"],
                       "started_at": info["started_at"],
                       "uptime_s": round(now - info["started_at"], 1),
                       "proxy_pid": os.getpid(), "workers": hub.workers,
                       "home": str(hub.paths.home), "runtime": str(hub.paths.runtime)},
            "backend": backend,
            "in_flight": hub.gate.in_flight,
            "requests_total": hub.gate.requests_total,
            "default_model": hub.config.default_model,
            "config_error": hub.config.config_error,
            "idle": hub.gate.scheduler.status(),
            "workers": hub.rpc.public(),  # RPC workers (daemon.workers: our processes)
        })

    def on_models(self, request: Request) -> Response:
        self.hub.config.refresh()
        catalog = self.hub.config.catalog
        models = encode_items(catalog.entries, self._model_summary)  # yields to the loop
        body = encode_object({"config_error": self.hub.config.config_error,
                              "problems": catalog.problems,
                              "models_dir": str(self.hub.paths.models_dir),
                              "object": "list"},
                             {"models": models, "data": models})  # data: router-mode clients
        return Response(body, mimetype="application/json")

    def _model_summary(self, entry: Any) -> dict[str, Any]:
        summary = entry.summary()
        backend = self.hub.backend.backend
        summary["active"] = entry.id is not None and entry.id == backend.model and \
            backend.active
        summary["default"] = entry.id is not None and entry.id == self.hub.config.default_model
        summary.update(router_fields(entry.id, backend, int(self.started)))
        summary["aliases"] = entry.config["aliases"] if entry.config else []
        summary["memory"] = self.hub.memory.field(entry)
        if entry.config:
            llama = entry.config["llama"]
            summary["workers"] = [name for name, _ in model_workers(entry.config)] \
                if entry.available else []
            if entry.available and (why := self.hub.rpc.refusal(entry.id, entry.config)):
                summary["available"], summary["error"] = False, why
            summary["ctx_size"] = llama["ctx_size"]
            summary["pi"] = entry.config["pi"]["model"]
            why = no_tool_calls(entry.config, entry.facts, summary.get("config_file"))
            summary["tool_calls"], summary["tool_calls_note"] = why is None, why
        return summary

    def on_model(self, request: Request, model: str) -> Response:
        self.hub.config.refresh()
        entry = self._entry(model)
        if entry is None:
            match = resolve(model, self._choices())
            return error(404, "not_found", f"no model with id {model!r}",
                         suggestions=match.candidates)
        summary = self._model_summary(entry)
        summary["config"] = entry.config
        if entry.config and entry.model_path is not None:
            summary["kv_cache"] = kv_view(self.hub.paths, entry, self.hub.backend.backend)
        return json_response(summary)

    def on_active(self, request: Request) -> Response:
        view = self.hub.config
        backend = self.hub.backend.backend
        active = backend.model if backend.active else None
        entry = view.entry(active or view.default_model)
        config = entry.config if entry is not None and entry.config else view.config.data
        pi_model = dict(config["pi"]["model"])
        pi_model.setdefault("name", entry.name if entry is not None and entry.name else "local")
        return json_response({
            "model": active, "name": entry.name if active and entry else None,
            "state": backend.state, "default_model": view.default_model,
            # the model `state` is about, also when it is not active (failed, stopping)
            "backend_model": backend.model,
            "error": backend.error if backend.state == "failed" else None,
            "generation": backend.generation,
            "pi": {"model": pi_model, "provider_compat": config["pi"]["provider_compat"]},
            "idle": self.hub.gate.scheduler.status(),
        })

    def on_logs(self, request: Request, model: str | None = None) -> Response:
        model = model or self.hub.backend.backend.model
        if not model:
            return error(404, "no_model", "no model is active; name the model whose log you "
                         "want (`llmctl logs <model>`, GET /logs/<model>)")
        if not MODEL_ID_RE.fullmatch(model):
            return error(400, "bad_model_id", f"{model!r} is not a model id")
        path = self.hub.paths.log_file(model)
        if not path.exists():
            if self._entry(model) is None:  # a log outlives its model, so only now ask
                return error(404, "not_found", f"no model with id {model!r} (and no log for "
                             "it); run `llmctl models` to see the ids")
            return error(404, "no_log", f"no log for {model} yet (it has not been started)")
        lines = request.args.get("lines", "100")
        if not lines.isdigit():
            return error(400, "bad_lines", "lines must be a number")
        count = min(int(lines), LOG_LINES_MAX)
        tail = "\n".join(read_log_tail(path, 0, count)) + "\n" if count else ""
        if request.args.get("follow") not in ("1", "true", "yes"):
            return Response(tail, mimetype="text/plain")
        sock = request.environ.get("llmctl.socket")
        return Response(_follow(path, tail, sock), mimetype="text/plain")

    def on_v1_models(self, request: Request) -> Response:
        backend = self.hub.backend.backend
        scheduler = self.hub.gate.scheduler
        routed = routed_models(backend, self.hub.config.catalog, int(self.started)) \
            if scheduler.routing else []
        return json_response({"object": "list", "data": [{
            "id": "local", "object": "model", "created": int(self.started), "owned_by": "llmctl",
            "meta": {"active_model": backend.model, "state": backend.state,
                     "default_model": self.hub.config.default_model},
        }, *routed]})

    # --- router-style model management (router_api) ------------------------------------------

    def on_router_load(self, request: Request) -> Response:
        return self.router.load(request)

    def on_router_unload(self, request: Request) -> Response:
        return self.router.unload(request)

    def on_router_events(self, request: Request) -> Response:
        return self.router.events(request)

    def on_metrics(self, request: Request) -> Response:
        return observe_routes.metrics(self.observer, error)

    def on_activity(self, request: Request) -> Response:
        return observe_routes.activity(self.observer, request, error, json_response)

    def on_dashboard(self, request: Request, asset: str = "index.html") -> Response:
        found = ui.asset(asset)
        if found is None:
            return error(404, "not_found", f"the dashboard has no file {asset!r}; open / "
                         "for the dashboard")
        return found

    # --- commands --------------------------------------------------------------------------------

    def _choices(self) -> dict[str, str]:
        # A model whose config.yaml is broken has no id, only the key `llmctl models` lists it
        # by; it is a choice too, so naming it says why it cannot load instead of "no match".
        return {e.id or e.key: e.name or e.id or e.key for e in self.hub.config.catalog.entries}

    def _entry(self, name: str) -> ModelEntry | None:
        """The model with this id, else the broken one `llmctl models` lists under this name."""
        view = self.hub.config
        return view.entry(name) or next(
            (e for e in view.catalog.entries if e.id is None and e.key == name), None)

    def _aliases(self) -> dict[str, str]:
        return {name: model for name, model in name_index(self.hub.config.catalog).items()
                if name != model}

    def on_switch(self, request: Request, model: str) -> Response:
        hub = self.hub
        hub.config.refresh()
        query = unquote(model)
        match = resolve(query, self._choices(), self._aliases())
        if match.kind == "not_found":
            hint = (f"did you mean {', '.join(match.candidates)}?" if match.candidates else
                    "run `llmctl models` to see what is available")
            return error(404, "not_found", f"no model matches {query!r}; {hint}",
                         suggestions=match.candidates)
        if match.kind == "ambiguous":
            return error(409, "ambiguous", f"{query!r} matches several models: "
                         f"{', '.join(match.candidates)}; be more specific",
                         candidates=match.candidates)
        entry = self._entry(match.model) if match.model else None
        assert entry is not None and match.model is not None
        if not entry.available:
            return error(422, "unavailable", f"{match.model} cannot be loaded: {entry.error}")
        if (why := hub.rpc.refusal(match.model, entry.config)) is not None:
            return error(503, "unavailable", why)
        try:
            command = hub.gate.begin(p.Switch, _flag(request, "force"), model=match.model,
                                     pin=_flag(request, "pin"), fit=_flag(request, "fit"),
                                     fit_check=not _flag(request, "no_fit_check"))
        except Busy as e:
            return error(409, "busy", str(e), in_flight=e.in_flight)
        resolved = {"event": "resolved", "model": match.model, "query": query}
        if _flag(request, "stream"):
            return Response(_ndjson(command, resolved), mimetype="application/x-ndjson")
        return _reply_response(command.reply())

    def on_stop(self, request: Request) -> Response:
        try:
            command = self.hub.gate.begin(p.Stop, _flag(request, "force"))
        except Busy as e:
            return error(409, "busy", str(e), in_flight=e.in_flight)
        reply = command.reply()
        if reply.ok:
            return json_response({"stopped": reply.data.get("stopped")})
        return _reply_response(reply)

    def on_reload(self, request: Request) -> Response:
        view = self.hub.config
        before = set(self._choices())
        view.refresh()
        after = set(self._choices())
        self.hub.commands.send(p.Reload)
        return json_response({
            "models": len(view.catalog.entries), "added": sorted(after - before),
            "removed": sorted(before - after), "config_error": view.config_error,
            "unavailable": [{"id": e.key, "error": e.error} for e in view.catalog.entries
                            if not e.available],
        })

    def on_pull(self, request: Request) -> Response:
        from llmctl.daemon.api.pull_route import pull_response  # the pull stack: on first use

        return pull_response(request, self.hub, error)

    def on_cache(self, request: Request) -> Response:
        return cache_response(request, self.hub, False, json_response, _reply_response, error)

    def on_cache_clear(self, request: Request) -> Response:
        return cache_response(request, self.hub, True, json_response, _reply_response, error)

    def on_restart_proxy(self, request: Request) -> Response:
        self.hub.commands.send(p.RestartProxy)
        return json_response({"restarting": True, "pid": os.getpid()}, 202)


def _body_refused(e: BodyError) -> Response:
    """A control body too big or too slow: answered at once, and the connection closed
    rather than drained."""
    message = f"control requests take a small JSON body at most: {e.message}" \
        if e.status == 413 else e.message
    response = error(e.status, e.code, message)
    response.headers["Connection"] = "close"
    return response


def _preflight(environ: dict[str, Any], start_response: Any, origin: str) -> list[bytes]:
    start_response("204 No Content", [
        ("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
        ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
        ("Access-Control-Allow-Headers",
         environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "Content-Type, Authorization")),
        ("Access-Control-Max-Age", "600")])
    return []


def _with_cors(start_response: Any, origin: str) -> Any:
    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers = [h for h in headers if not h[0].lower().startswith("access-control-")]
        return start_response(status, [*headers, ("Access-Control-Allow-Origin", origin),
                                       ("Vary", "Origin")], exc_info)

    return start


def _flag(request: Request, name: str) -> bool:
    return request.args.get(name, "").lower() in ("1", "true", "yes")


_FAILURE_STATUS = {"not_found": 404, "unavailable": 503, "config_error": 422,
                   "backend_setup": 424, "port_in_use": 409, "cancelled": 409,
                   "load_timeout": 504, "load_failed": 502, "load_stalled": 502,
                   "insufficient_memory": 503,
                   "timeout": 504}


def _reply_response(reply: p.Reply) -> Response:
    if reply.ok:
        return json_response({k: v for k, v in reply.data.items() if k != "event"}
                             | {"state": "ready"})
    err = dict(reply.error or {})
    code = err.pop("code", "error")
    message = err.pop("message", "the command failed")
    return error(_FAILURE_STATUS.get(code, 500), code, message, **err)


def _ndjson(command: Pending, first: dict[str, Any]) -> Iterator[bytes]:
    yield (json.dumps(first) + "\n").encode()
    for message in command:
        if isinstance(message, p.Event):
            out = {"event": message.event, **message.data}
        elif message.ok:
            out = {"event": "ready", **message.data}
        else:
            out = {"event": "error", "model": message.data.get("model"),
                   **(message.error or {})}
        yield (json.dumps(out) + "\n").encode()


def _follow(path: Any, first: str, sock: Any) -> Iterator[bytes]:
    """Stream a log as it grows until the client goes away. Polls the file (cheap, and works
    for a file written by a process we do not own); notices a truncation and starts over."""
    yield first.encode()
    position = path.stat().st_size
    while True:
        gevent.sleep(0.25)
        if sock is not None and _client_gone(sock):
            return
        try:
            size = path.stat().st_size
        except OSError:
            return
        if size < position:
            position = 0
        if size > position:
            with open(path, "rb") as f:
                f.seek(position)
                data = f.read(min(size - position, 1024 * 1024))
            position += len(data)
            yield data


def _client_gone(sock: Any) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True

