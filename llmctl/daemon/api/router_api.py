"""Model management in the shape of llama-server's router mode, for clients built on it.

llama-server started without a model is a "router" (tools/server/server-models.cpp): its
`GET /models` entries carry `status.value` (unloaded|loading|loaded), `POST /models/load` and
`POST /models/unload` take `{"model": name}`, and `GET /models/sse` streams
`data: {"model", "event", "data"}` events (`status_change` with a load `progress`). Open WebUI,
Pi's llama.cpp provider and letta-code drive that API. This module offers the same on llmctld
without giving up its rules: one model at a time, so load = switch and unload = stop, and both
are refused with 409 while requests are in flight. The progress is the lifecycle worker's
real one (read from the process's file reads), as the hub hears it in state broadcasts.

It adds the router's fields beside ours in `GET /models` (the CLI and Pi read ours), and
never changes what a switch or stop does: it goes through the gate exactly as /switch and
/stop do, and a failed command is answered the way they answer it (app.py passes that in).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Request, Response

from llmctl.core.aliases import name_index
from llmctl.core.catalog import Catalog
from llmctl.core.resolve import resolve
from llmctl.core.state import Backend
from llmctl.daemon.admission.gate import Busy
from llmctl.daemon.api.errors import error_body
from llmctl.daemon.api.hub import Hub
from llmctl.daemon.ipc import protocol as p

KEEPALIVE_SECONDS = 10.0  # an SSE comment this often: proxies keep the stream, we notice a gone client
PROGRESS_STAGES = ["spawning", "loading", "warming"]  # the lifecycle worker's phases, in order


def router_status(model_id: str | None, backend: Backend) -> dict[str, Any]:
    """The router's `status` object of one model, from our backend record."""
    if model_id is None or backend.model != model_id:
        return {"value": "unloaded"}
    state = backend.state
    if state == "ready":
        return {"value": "loaded"}
    if state == "starting":
        status: dict[str, Any] = {"value": "loading"}
        progress = _progress(backend)
        if progress is not None:
            status["progress"] = progress
        return status
    if state == "failed":
        return {"value": "unloaded", "failed": True, "exit_code": backend.exit_code,
                "error": backend.error}
    # stopping: it serves nothing any more (requests wait for what comes next)
    return {"value": "unloaded"}


def routed_models(backend: Backend, catalog: Catalog, created: int) -> list[dict[str, Any]]:
    """/v1/models with routing on: every model id and alias after `local`, each with a
    status shaped like llama-server's router mode (loaded, loading, unloaded)."""

    def status(model_id: str) -> dict[str, Any]:
        if backend.model == model_id and backend.state in ("ready", "starting"):
            return {"value": "loaded" if backend.state == "ready" else "loading"}
        failed = backend.model == model_id and backend.state == "failed"
        return {"value": "unloaded", **({"failed": True} if failed else {})}

    out = []
    for entry in catalog.entries:
        if entry.id is None or not entry.available or not entry.config:
            continue
        aliases = entry.config["aliases"]
        for name in (entry.id, *aliases):
            out.append({"id": name, "object": "model", "created": created,
                        "owned_by": "llmctl", "aliases": aliases if name == entry.id else [],
                        "status": status(entry.id),
                        **({"meta": {"alias_of": entry.id}} if name != entry.id else {})})
    return out


def router_fields(model_id: str | None, backend: Backend, created: int) -> dict[str, Any]:
    """What a router's `GET /models` entry has and ours lacks (`aliases` we have already)."""
    return {"object": "model", "owned_by": "llmctl", "created": created, "tags": [],
            "status": router_status(model_id, backend)}


def _progress(backend: Backend) -> dict[str, Any] | None:
    progress = backend.progress
    if not progress:
        return None
    out: dict[str, Any] = {"stages": PROGRESS_STAGES, "current": progress["phase"],
                           "percent": progress.get("percent")}
    if progress.get("percent") is not None:  # unknown (mmap) stays absent, never a made-up 0
        out["value"] = round(progress["percent"] / 100, 4)
    return out


@dataclass(frozen=True)
class Seen:
    """What the SSE feed last told its client."""

    model: str | None
    status: dict[str, Any]


class RouterApi:
    def __init__(self, hub: Hub, failure: Callable[[p.Reply], Response]):
        self.hub = hub
        self.failure = failure  # the answer for a switch or stop that failed

    # --- commands ------------------------------------------------------------------------------

    def load(self, request: Request) -> Response:
        """Switch to the model, answering once its llama-server is starting (as the router
        answers once it has spawned the child); the rest shows in /models and /models/sse."""
        name = _model_name(request)
        if isinstance(name, Response):
            return name
        hub = self.hub
        hub.config.refresh()
        name = name_index(hub.config.catalog).get(name, name)  # an alias names its model, too
        entry = hub.config.entry(name)
        if entry is None:
            return self._not_found(name)
        if not entry.available:
            return _error(422, "unavailable", f"{name} cannot be loaded: {entry.error}")
        try:
            command = hub.gate.begin(p.Switch, False, model=name)
        except Busy as e:
            return _error(409, "busy", str(e), in_flight=e.in_flight)
        for message in command:
            if isinstance(message, p.Event) and message.event == "starting":
                return _json({"success": True, "model": name, "already_loaded": False})
            if isinstance(message, p.Reply):
                if not message.ok:
                    return self.failure(message)
                return _json({"success": True, "model": name,
                              "already_loaded": bool(message.data.get("already_active"))})
        raise AssertionError("a command's messages end with its reply")

    def unload(self, request: Request) -> Response:
        name = _model_name(request)
        if isinstance(name, Response):
            return name
        hub = self.hub
        backend = hub.backend.backend
        if backend.model != name or not backend.active:
            if hub.config.entry(name) is None:
                return self._not_found(name)
            return _error(400, "not_running", f"{name} is not loaded; nothing to unload")
        try:
            command = hub.gate.begin(p.Stop, False)
        except Busy as e:
            return _error(409, "busy", str(e), in_flight=e.in_flight)
        reply = command.reply()
        if not reply.ok:
            return self.failure(reply)
        return _json({"success": True, "model": name})

    def _not_found(self, name: str) -> Response:
        choices = {e.id: e.name or e.id for e in self.hub.config.catalog.entries if e.id}
        match = resolve(name, choices)
        hint = f"did you mean {', '.join(match.candidates)}?" if match.candidates else \
            "GET /models lists them"
        return _error(404, "not_found", f"no model with id {name!r}; {hint}",
                      suggestions=match.candidates)

    # --- the event feed ------------------------------------------------------------------------

    def events(self, request: Request) -> Response:
        # a GET, so the guard lets it pass; but a page must not watch what the user runs
        cross_site = self.hub.config.guard.origin_refusal(request.headers.get("Origin"))
        if cross_site is not None:
            return _error(403, "forbidden", cross_site)
        response = Response(self._feed(), mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        return response

    def _feed(self) -> Iterator[bytes]:
        view = self.hub.backend
        backend = view.backend
        seen = Seen(backend.model, router_status(backend.model, backend))
        yield b": llmctld model events\n\n"  # headers and a first byte now: clients see it is live
        last_write = time.monotonic()
        while True:
            view.wait_for_change(KEEPALIVE_SECONDS)
            backend = view.backend
            now = Seen(backend.model, router_status(backend.model, backend))
            events = transitions(seen, now, backend)
            seen = now
            for event in events:
                yield b"data: " + json.dumps(event).encode() + b"\n\n"
            if events:
                last_write = time.monotonic()
            elif time.monotonic() - last_write >= KEEPALIVE_SECONDS:
                yield b": keep-alive\n\n"
                last_write = time.monotonic()


def transitions(before: Seen, after: Seen, backend: Backend) -> list[dict[str, Any]]:
    """The router events that take a client from what it saw to what is now."""
    events = []
    if before.model not in (None, after.model) and before.status["value"] != "unloaded":
        assert before.model is not None
        events.append(_status_event(before.model, {"value": "unloaded"}))
    if after.model is not None and (after.model, after.status) != (before.model, before.status):
        events.append(_status_event(after.model, after.status, backend))
    return events


def _status_event(model: str, status: dict[str, Any],
                  backend: Backend | None = None) -> dict[str, Any]:
    data = {"status": status["value"], **{k: v for k, v in status.items() if k != "value"}}
    if status["value"] == "unloaded" and backend is not None and "exit_code" not in data:
        data["exit_code"] = backend.exit_code
    return {"model": model, "event": "status_change", "data": data}


def _model_name(request: Request) -> str | Response:
    body = request.get_json(silent=True)
    name = body.get("model") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        return _error(400, "bad_request", 'send a JSON body {"model": "<id>"} (see GET /models '
                      "for the ids)")
    return name


def _json(data: Any) -> Response:
    return Response(json.dumps(data) + "\n", mimetype="application/json")


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    return Response(error_body(status, code, message, **extra) + b"\n", status=status,
                    mimetype="application/json")
