"""Which model serves each proxied request, and when the backend loads, switches or unloads
because of requests. Runs in the proxy worker (gevent); the Gate (gate.py) asks it to admit
each proxied request before it hands out the request's Lease, and tells it of every release.

For every proxied request (`admit()`):

1. Its target. With daemon.route_by_model, the model the request names (the JSON body's
   `model`, or `?model=`): an id or an alias; `local` or no name means the current model.
   Without routing every name means the current model. When nothing is current, the request
   waits for an Ensure: the lifecycle worker wakes the model an idle unload stopped, else
   loads daemon.default_model, else answers with a 503 saying what to do.
2. A ticket in the ModelQueue (model_queue.py: fair, swap-aware, bounded). The queue names
   the model to switch to once the current model's requests are done; the switch goes to the
   lifecycle worker like any other (a Switch, or that Ensure), and nothing in flight is ever
   cut.
3. Once admitted, the request waits for its model to be ready (bounded by readyTimeoutMs)
   and gets the backend's address.

Idle unload: the IdleClock (idle.py) says when the running model is due; the idle loop then
stops it through the lifecycle worker like `llmctl stop`, but only while no lease is held and
nobody waits, so it never cuts a request. A request arriving meanwhile waits for that stop
(to the queue it is a switch under way) and then wakes the model again. The lifecycle worker
records the unload in the backend record (`unloaded`), so a restarted proxy wakes the same
model. A request's keep-alive (the Lease's `keep_alive`, leases.py) overrides the idle timeout:
see idle.py.

An explicit switch or stop (the control API, with its 409 busy rule) is waited for before a
request picks its target, as before routing existed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent

from llmctl.core.aliases import name_index
from llmctl.core.config import GlobalConfig, idle_unload_seconds, queue_timeout_seconds
from llmctl.core.durations import format_duration
from llmctl.daemon.admission.idle import IdleClock
from llmctl.daemon.admission.leases import InFlight, Lease
from llmctl.daemon.admission.model_queue import ModelQueue, Refusal, Ticket, View
from llmctl.daemon.api.backend_view import BackendView
from llmctl.daemon.api.config_view import ConfigView
from llmctl.daemon.api.errors import Unavailable
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.commands import COMMAND_SLACK, CommandClient

log = logging.getLogger("llmctld.proxy")

IDLE_POLL = 1.0  # the idle loop looks at least this often (and at every backend change; a
# finished request only moves the idle clock, so a busy daemon does not wake the loop each time)
LOCAL = "local"  # the name that always means the current model
ENSURE = "*"  # the queue's name for "whatever the Ensure loads" (never a model id)


class Scheduler:
    def __init__(self, view: BackendView, commands: CommandClient, config: ConfigView,
                 busy: InFlight):
        self.view, self.commands, self.config, self.busy = view, commands, config, busy
        self.queue = ModelQueue(1, 1.0)
        self.idle = IdleClock()
        self._idle_wake = 0.0  # when the idle loop looks next (0: not started, it looks then)
        self.switching: str | None = None  # the model of the switch we started (or ENSURE)
        self.unloading: str | None = None  # the model we are stopping for idleness
        # model -> (when, reply) of the last switch we started for it that failed: every
        # request for it that arrived before then was waiting for that very load
        self._failures: dict[str, tuple[float, p.Reply]] = {}
        self._configured: tuple[GlobalConfig, Any] | None = None
        self._reads_bodies = False
        self._configure()

    def start(self) -> None:
        gevent.spawn(self._idle_loop)

    def _configure(self) -> None:
        """Follow a re-read configuration (ConfigView.refresh replaces its objects)."""
        key = (self.config.config, self.config.catalog)
        if self._configured is not None and self._configured[0] is key[0] and \
                self._configured[1] is key[1]:
            return
        self._configured = key
        daemon = self.config.config.data["daemon"]
        self.queue.depth = daemon["queue_depth"]
        self.queue.timeout = queue_timeout_seconds(self.config.config)
        self._reads_bodies = bool(daemon["route_by_model"]) or any(
            e.config and any(e.config["request"].values()) for e in self.config.catalog.entries)

    @property
    def routing(self) -> bool:
        return bool(self.config.config.data["daemon"]["route_by_model"])

    def reads_bodies(self) -> bool:
        """Whether proxied bodies must be looked at: for routing, or for request overrides."""
        self._configure()
        return self._reads_bodies

    # --- admission -----------------------------------------------------------------------------

    def admit(self, requested: str | None) -> tuple[Ticket, tuple[str, int], str]:
        """Wait until the model this request goes to is ready: its ticket (admitted; the gate
        releases it with the lease), the backend's address and the model. Raises Unavailable."""
        self._configure()
        deadline = time.monotonic() + self.config.ready_timeout + COMMAND_SLACK
        while self.busy.gating:  # an explicit switch or stop: see where it lands
            self._wait(deadline)
        while True:
            ticket = self._join(self.target(requested))
            try:
                ready = self._serve(ticket, deadline)
            except BaseException:
                self._drop(ticket)
                raise
            if ready is not None:
                self.idle.touch(time.monotonic(), model=ready[1])
                return ticket, ready[0], ready[1]
            self._drop(ticket)  # the backend went elsewhere meanwhile: queue again

    def released(self, lease: Lease) -> None:
        if lease.ticket is not None:
            self.queue.release(lease.ticket)
        self.idle.touch(time.monotonic(), lease.keep_alive, lease.model)
        self._kick()
        due = self._idle_due()
        if due is not None and due < self._idle_wake:  # sooner than the loop looks again
            self.view.notify()  # (a keep-alive of 0, a timeout under IDLE_POLL)

    def target(self, requested: str | None) -> str:
        if self.routing and requested and requested != LOCAL:
            return self._named(requested)
        current = self._view().current
        return ENSURE if current is None else current

    def _named(self, name: str) -> str:
        model = name_index(self.config.catalog).get(name)
        if model is None:
            self.config.refresh()  # added on disk since? (only on this error path: it reads YAML)
            model = name_index(self.config.catalog).get(name)
        if model is None:
            ids = [e.id for e in self.config.catalog.entries if e.id and e.available]
            raise Unavailable(404, "model_not_found", (
                f"no model named {name!r}. Use {LOCAL!r} for the active model, or one of: "
                f"{', '.join(ids) or '(none: run `llmctl models`)'} (aliases are listed by "
                "GET /v1/models)"), "invalid_request_error")
        entry = self.config.entry(model)
        if entry is not None and not entry.available:
            raise Unavailable(503, "model_unavailable", f"{model} cannot be loaded: {entry.error}")
        return model

    def _join(self, target: str) -> Ticket:
        try:
            ticket = self.queue.join(target, time.monotonic(), self._view())
        except Refusal as e:
            raise Unavailable(e.status, e.code, e.message, retry_after=e.retry_after) from None
        self._kick()
        return ticket

    def _drop(self, ticket: Ticket) -> None:
        self.queue.release(ticket)
        self._kick()

    def _serve(self, ticket: Ticket, deadline: float) -> tuple[tuple[str, int], str] | None:
        """Wait for the ticket's turn, then for its model: (address, model), or None when the
        backend went elsewhere (an explicit switch) and the request must queue again."""
        while ticket.state == "waiting":
            self._kick()
            if ticket.state != "waiting":
                break
            self._wait(deadline, ticket.deadline)
        if ticket.state == "expired":
            assert ticket.refusal is not None
            refusal = ticket.refusal
            raise Unavailable(refusal.status, refusal.code, refusal.message,
                              retry_after=refusal.retry_after)
        return self._ready(ticket, deadline)

    def _ready(self, ticket: Ticket, deadline: float) -> tuple[tuple[str, int], str] | None:
        model = ticket.model
        while True:
            failed_at, reply = self._failures.get(model, (0.0, None))
            if reply is not None and failed_at >= ticket.arrived:
                raise self._load_failed(model, reply)
            backend = self.view.backend
            mine = backend.model == model or model == ENSURE
            waiting = self.busy.gating or self.switching == model or self.unloading
            if not waiting and mine and backend.state == "ready" and backend.host and \
                    backend.port and backend.model:
                return (backend.host, backend.port), backend.model
            if not waiting and not (mine and backend.state == "starting"):
                return None
            self._wait(deadline)

    def _load_failed(self, model: str, reply: p.Reply) -> Unavailable:
        error = reply.error or {}
        code, message = error.get("code", "load_failed"), error.get("message", "loading failed")
        if code == "insufficient_memory":  # refused before anything was stopped or loaded
            return Unavailable(503, code, message)
        if model != ENSURE:
            return Unavailable(503, code, f"loading {model} for this request failed: {message}")
        if code in ("no_model", "unavailable", "config_error"):
            return Unavailable(503, code, message)
        loaded = reply.data.get("model") or self.config.default_model
        return Unavailable(503, "default_model_failed", (
            f"loading the default model {loaded} failed: {message}. Fix it, or run "
            "`llmctl switch <model>`"))

    def _wait(self, deadline: float, until: float | None = None) -> None:
        if self.commands.closed is not None:  # no load can finish for us any more
            raise Unavailable(503, "unavailable", "llmctld lost its supervisor while this "
                              "request waited for a model; retry in a moment")
        now = time.monotonic()
        if now >= deadline:
            raise Unavailable(504, "load_timeout",
                              "timed out waiting for the model to become ready", "timeout_error")
        self.view.wait_for_change(max(0.0, min(deadline, until or deadline, now + 1.0) - now))

    # --- switches the queue asks for -----------------------------------------------------------

    def _view(self) -> View:
        backend = self.view.backend
        current = backend.model if backend.state in ("starting", "ready") else None
        if self.unloading:
            current = None
        switching = self.switching is not None or self.unloading is not None
        return View(current if self.switching is None else self.switching,
                    switching or bool(self.busy.gating))

    def _kick(self) -> None:
        """Let the queue move: expire, admit, and start the switch it names."""
        if not self.queue.waiting:  # the common case: every request went straight through
            return
        before = (self.queue.waiting, self.queue.admitted)
        target = self.queue.step(self._view(), time.monotonic())
        if target is not None:
            self._switch(target)
            self.queue.step(self._view(), time.monotonic())
        if (self.queue.waiting, self.queue.admitted) != before:
            self.view.notify()

    def _switch(self, model: str) -> None:
        waiting = dict(self.queue.line()).get(model, 0)
        if model == ENSURE:
            log.debug("nothing is loaded: asking for a model for %d request(s)", waiting)
            pending = self.commands.send(p.Ensure)
        else:
            log.info("switching to %s for %d waiting request(s)", model, waiting)
            pending = self.commands.send(p.Switch, model=model)
        self.switching = model

        def follow() -> None:
            reply = pending.reply()
            self.switching = None
            if not reply.ok and (reply.error or {}).get("code") != "cancelled":
                self._failures[model] = (time.monotonic(), reply)  # cancelled: queue again
            self._kick()
            self.view.notify()

        if pending.answered:  # refused at once (a closed channel): no greenlet to wait for it
            follow()
        else:
            gevent.spawn(follow)

    # --- idle unload ---------------------------------------------------------------------------

    def _idle_loop(self) -> None:
        while True:
            now = time.monotonic()
            try:
                due = self._idle_due()
                if due is not None and now >= due:
                    if self._may_unload():
                        self._unload()
                        continue
                    due = None  # due, but busy: the request that ends it moves the clock
            except Exception:  # a bug here must not end idle unloading for good
                log.exception("the idle check failed")
                due = None
            wait = IDLE_POLL if due is None else min(IDLE_POLL, max(0.01, due - now))
            self._idle_wake = now + wait
            self.view.wait_for_change(wait)

    def _idle_timeout(self) -> float | None:
        backend = self.view.backend
        entry = self.config.entry(backend.model)
        configured = idle_unload_seconds(entry.config) if entry and entry.config else None
        return self.idle.timeout(configured, backend.pinned)

    def _idle_due(self) -> float | None:
        backend = self.view.backend
        if backend.state != "ready" or not backend.model:
            return None
        if self.idle.model != backend.model:
            self.idle.reset(backend.model, time.monotonic())
        timeout = self._idle_timeout()
        return None if timeout is None else self.idle.last_activity + timeout

    def _may_unload(self) -> bool:
        return not (self.busy.gating or self.switching or self.unloading or
                    self.busy.count or self.queue.waiting or self.queue.admitted)

    def _unload(self) -> None:
        model = self.view.backend.model
        timeout = self._idle_timeout() or 0.0
        log.info("unloading %s: idle for %s", model, format_duration(timeout, compact=True))
        self.unloading = model
        try:
            reply = self.commands.send(p.Stop, idle_seconds=timeout).reply()
            if not reply.ok:
                log.warning("the idle unload of %s failed: %s", model, reply.error)
        finally:
            self.unloading = None
            self.idle.reset(None, time.monotonic())
        self._kick()
        self.view.notify()

    # --- what /status and /active show ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        backend = self.view.backend
        out: dict[str, Any] = {
            "idle_unload_s": None, "unloads_in_s": None, "unloads_at": None,
            "pinned": backend.pinned,
            "unloaded": None, "text": None, "route_by_model": self.routing,
            "queue": [{"model": "(any)" if m == ENSURE else m, "waiting": n}
                      for m, n in self.queue.line()]}
        unloaded = backend.unloaded
        if backend.state == "stopped" and unloaded:
            out["unloaded"] = unloaded
            out["text"] = (f"unloaded after {format_duration(unloaded['idle_seconds'], True)} "
                           "idle — wakes on the next request")
            return out
        if backend.state != "ready":
            return out
        due = self._idle_due()
        timeout = self._idle_timeout()
        out["idle_unload_s"] = timeout
        if backend.pinned:
            out["text"] = "pinned — never unloaded for idleness"
        elif timeout is not None and (self.busy.count or self.queue.admitted):
            out["text"] = (f"unloads {format_duration(timeout, True)} after the last request "
                           "ends")
        elif due is not None:
            left = max(0.0, due - time.monotonic())
            # the deadline on the wall clock, for pollers (top, the dashboard) to count down
            # from: time left taken at each poll jitters with the poll and skips seconds
            out["unloads_at"] = round(time.time() + left, 3)
            out["unloads_in_s"] = round(left, 1)
            out["text"] = f"unloads in {format_duration(left)}"
        return out
