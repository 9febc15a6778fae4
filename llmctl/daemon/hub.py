"""The proxy worker's view of the daemon: backend state, models, and the in-flight gate.

Runs inside the gevent proxy worker. A reader greenlet applies every message from the channel:
state broadcasts replace `backend`, events and replies go to the queue of the request waiting
for them. Only the proxy sees requests, so it alone decides what is busy:

- `in_flight` counts proxied requests between choosing a backend and finishing the response;
- a switch or stop is refused while it is non-zero (unless forced);
- once one is accepted (`gating` non-empty), new proxied requests wait until the backend is
  ready again or the command failed, bounded by the load timeout.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.event import Event
from gevent.queue import Queue

from llmctl.core.config import ConfigError, GlobalConfig, load_global
from llmctl.core.discovery import Catalog, ModelEntry, discover
from llmctl.core.paths import Paths
from llmctl.core.state import empty_backend, read_state
from llmctl.daemon.channel import Channel, ChannelClosed

log = logging.getLogger("llmctld.proxy")

COMMAND_SLACK = 60.0  # beyond load + stop timeouts, for a reply that never comes
# A client that just read a stream's last event may switch before the proxy has read the
# upstream's end-of-stream and released that request: give finishing requests this long.
BUSY_GRACE = 0.5


class Unavailable(Exception):
    """No backend can serve this request; `status` and `message` go to the client."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Busy(Exception):
    def __init__(self, in_flight: int):
        self.in_flight = in_flight
        super().__init__(
            f"{in_flight} request{'s are' if in_flight != 1 else ' is'} in flight; retry when "
            "they finish, or pass force=1 to cut them off")


@dataclass
class Command:
    id: str
    queue: Queue
    deadline: float


class Hub:
    def __init__(self, channel: Channel, paths: Paths, daemon_info: dict[str, Any],
                 config: GlobalConfig):
        self.channel = channel
        self.paths = paths
        self.daemon_info = daemon_info
        self.backend: dict[str, Any] = empty_backend()
        self.workers: dict[str, Any] = {}
        self.in_flight = 0
        self.relays: set[Any] = set()  # open proxied responses (openai_proxy.Relay)
        self.requests_total = 0
        self.gating: set[str] = set()
        self.default_load: str | None = None
        self.default_error: str | None = None
        self._pending: dict[str, Queue] = {}
        self._ids = itertools.count(1)
        self._changed = Event()
        self.closed = Event()
        # The configuration llmctld validated at start-up: a worker restarted after the file
        # was broken by an edit still boots, and reports the error.
        self.config = config
        self.config_error: str | None = None
        self.catalog = Catalog()
        self.refresh()
        data, _ = read_state(paths.state_file)
        if data:  # serve at once from what the lifecycle worker last wrote
            self.backend = data["backend"]

    def start(self) -> None:
        gevent.spawn(self._read_channel)
        self.command("sync")  # the file may lag behind a load in progress

    # --- configuration -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the global config (keeping the last good one if it is now broken) and
        re-discover models. Cheap (a few small YAML files), so control routes call it freely."""
        try:
            self.config = load_global(self.paths.config_file)
            self.config_error = None
        except ConfigError as e:
            self.config_error = f"{e} (still using the previous configuration)"
        try:
            self.catalog = discover(self.paths.models_dir, self.config)
        except ConfigError as e:
            self.config_error = str(e)

    @property
    def default_model(self) -> str | None:
        return self.config.data["daemon"]["default_model"]

    @property
    def ready_timeout(self) -> float:
        return self.config.data["server"]["readyTimeoutMs"] / 1000

    def entry(self, model_id: str | None) -> ModelEntry | None:
        return self.catalog.by_id(model_id) if model_id else None

    # --- the channel ---------------------------------------------------------------------------

    def _read_channel(self) -> None:
        try:
            while True:
                for message in self.channel.receive():
                    self._apply(message)
        except ChannelClosed:
            log.warning("the supervisor went away; the proxy worker stops")
            self.closed.set()

    def _apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "state":
            self.backend = message["backend"]
            self.notify()
        elif kind in ("event", "reply"):
            rid = str(message.get("id"))
            if kind == "reply" and rid == "sync" and message.get("ok"):
                self.backend = message["backend"]
            if kind == "reply":
                self._finish(rid, message)
            queue = self._pending.get(rid)
            if queue is not None:
                queue.put(message)
                if kind == "reply":
                    self._pending.pop(rid, None)
        elif kind == "workers":
            self.workers = message["workers"]
            self.daemon_info["supervisor_pid"] = message.get("supervisor_pid")
        elif kind == "control" and message.get("action") == "reload":
            self.refresh()

    def _finish(self, rid: str, reply: dict[str, Any]) -> None:
        self.gating.discard(rid)
        if rid == self.default_load:
            self.default_load = None
            self.default_error = None if reply.get("ok") else (
                reply.get("error", {}).get("message") or "loading the default model failed")
        self.notify()

    def notify(self) -> None:
        changed, self._changed = self._changed, Event()
        changed.set()

    def wait_for_change(self, timeout: float) -> None:
        self._changed.wait(timeout)

    def command(self, cmd: str, *, to: str = "lifecycle", gate: bool = False,
                **fields: Any) -> Command:
        rid = "sync" if cmd == "sync" else f"p{os.getpid()}-{next(self._ids)}"
        queue: Queue = Queue()
        self._pending[rid] = queue
        if gate:
            self.gating.add(rid)
        message = {"type": "cmd", "id": rid, "cmd": cmd, **fields}
        if to != "lifecycle":
            message["to"] = to
        try:
            self.channel.send(message)
        except ChannelClosed:
            self._pending.pop(rid, None)
            self.gating.discard(rid)
            queue.put({"type": "reply", "id": rid, "ok": False, "error": {
                "code": "unavailable", "message": "llmctld is shutting down"}})
        deadline = time.monotonic() + self.ready_timeout + COMMAND_SLACK
        return Command(rid, queue, deadline)

    def next_message(self, command: Command) -> dict[str, Any]:
        """The next event or the reply for a command; a synthetic error reply past its
        deadline, so no caller ever waits forever."""
        try:
            return command.queue.get(timeout=max(0.0, command.deadline - time.monotonic()))
        except gevent.queue.Empty:
            self._pending.pop(command.id, None)
            self._finish(command.id, {"ok": False})
            return {"type": "reply", "id": command.id, "ok": False, "error": {
                "code": "timeout", "message": "the lifecycle worker did not answer in time"}}

    # --- gating --------------------------------------------------------------------------------

    def begin(self, cmd: str, force: bool, **fields: Any) -> Command:
        """Start a switch or stop: refused while requests are in flight unless forced."""
        if self.in_flight and not force:
            deadline = time.monotonic() + BUSY_GRACE
            while self.in_flight and (remaining := deadline - time.monotonic()) > 0:
                self.wait_for_change(remaining)
            if self.in_flight:
                raise Busy(self.in_flight)
        # llama-server does not exit on SIGTERM while a request is open: cut them first
        for relay in list(self.relays):
            relay.abort()
        return self.command(cmd, gate=True, **fields)

    def acquire(self) -> tuple[str, int]:
        """The address of a ready backend for one proxied request, waiting for a load in
        progress and starting the default model if nothing is loaded."""
        deadline = time.monotonic() + self.ready_timeout + COMMAND_SLACK
        started_default = False
        while True:
            state = self.backend["state"]
            if not self.gating and state == "ready" and self.default_load is None:
                return self.backend["host"], self.backend["port"]
            if not self.gating and self.default_load is None and state in ("stopped", "failed"):
                if started_default and self.default_error:
                    raise Unavailable(503, "default_model_failed", (
                        f"loading the default model {self.default_model} failed: "
                        f"{self.default_error}. Fix it, or run `llmctl switch <model>`"))
                if not self.default_model:
                    raise Unavailable(503, "no_model", self._idle_message())
                started_default = True
                self.default_error = None
                self.default_load = self.command("switch", model=self.default_model).id
                log.info("loading the default model %s for a waiting request",
                         self.default_model)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(504, "load_timeout",
                                  "timed out waiting for the model to become ready")
            self.wait_for_change(min(remaining, 1.0))

    def _idle_message(self) -> str:
        if self.backend["state"] == "failed" and self.backend.get("error"):
            return (f"no model is loaded: the last one failed ({self.backend['error']}). "
                    "Run `llmctl switch <model>`, or set daemon.default_model to load one "
                    "on demand")
        return ("no model is loaded. Run `llmctl switch <model>` (see `llmctl models`), or set "
                "daemon.default_model in config/default.yaml to load one on the first request")
