"""The in-flight gate: who may use the backend, and what is busy. Only the proxy sees
requests, so it alone decides.

The lease rule: a proxied request holds a Lease from `acquire()` until its response is over,
and nothing else counts in-flight requests.

    lease = hub.gate.acquire()            # waits for a ready backend (or raises Unavailable)
    with lease:                           # an exception anywhere in the block releases it
        conn, response = send(lease.address, ...)
        return Relay(..., lease, ...)     # Relay.__init__ calls lease.hand_to(self): the
                                          # response's close() releases it from then on

- `in_flight` is the number of unreleased leases;
- a switch or stop (`begin()`) is refused while it is non-zero (unless forced: then every
  leased response is cut off first, since llama-server does not exit on SIGTERM while a
  request is open);
- once one is accepted (`gating` non-empty), `acquire()` waits until the backend is ready
  again or the command failed, bounded by the load timeout;
- with nothing loaded, `acquire()` asks the lifecycle worker to Ensure a model (it decides
  whether to load the default one) and waits; concurrent requests share one Ensure and all get
  its error if it fails.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any, Protocol

import gevent
from gevent.event import AsyncResult

from llmctl.daemon import protocol as p
from llmctl.daemon.backend_view import BackendView
from llmctl.daemon.commands import COMMAND_SLACK, CommandClient, Pending
from llmctl.daemon.config_view import ConfigView

log = logging.getLogger("llmctld.proxy")

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


class Abortable(Protocol):
    def abort(self) -> None: ...

    def close(self) -> None: ...


class Lease:
    """One proxied request's right to the backend at `address`."""

    def __init__(self, gate: Gate, address: tuple[str, int]):
        self.gate, self.address = gate, address
        self.relay: Abortable | None = None
        self.released = False

    def hand_to(self, relay: Abortable) -> None:
        """The response outlives the with-block: its close() releases the lease."""
        self.relay = relay

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.gate._leases.discard(self)
        self.gate.view.notify()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None and self.relay is not None:
            self.relay.close()  # a response that will never be iterated
        if kind is not None or self.relay is None:
            self.release()


class Gate:
    def __init__(self, view: BackendView, commands: CommandClient, config: ConfigView):
        self.view, self.commands, self.config = view, commands, config
        self._leases: set[Lease] = set()
        self.requests_total = 0
        self.gating: set[str] = set()  # accepted switch/stop commands not yet answered
        self._ensuring: AsyncResult | None = None

    @property
    def in_flight(self) -> int:
        return len(self._leases)

    def finished(self, rid: str) -> None:
        """A command got its reply (CommandClient tells us)."""
        self.gating.discard(rid)
        self.view.notify()

    def begin(self, kind: type[p.Command], force: bool, **fields: Any) -> Pending:
        """Start a switch or stop: refused while requests are in flight unless forced."""
        if self.in_flight and not force:
            deadline = time.monotonic() + BUSY_GRACE
            while self.in_flight and (remaining := deadline - time.monotonic()) > 0:
                self.view.wait_for_change(remaining)
            if self.in_flight:
                raise Busy(self.in_flight)
        for lease in list(self._leases):
            if lease.relay is not None:
                lease.relay.abort()
        pending = self.commands.send(kind, **fields)
        if not pending.answered:  # e.g. refused at once: the channel is closed
            self.gating.add(pending.id)
        return pending

    def acquire(self) -> Lease:
        """A lease on a ready backend for one proxied request, waiting for a load in progress
        and asking for the default model if nothing is loaded."""
        deadline = time.monotonic() + self.config.ready_timeout + COMMAND_SLACK
        while True:
            backend = self.view.backend
            if not self.gating and self._ensuring is None and backend.state == "ready" and \
                    backend.host and backend.port:
                lease = Lease(self, (backend.host, backend.port))
                self._leases.add(lease)
                self.requests_total += 1
                return lease
            if self.commands.closed is not None:  # no load can finish for us any more
                raise Unavailable(503, "unavailable", "llmctld lost its supervisor while "
                                  "this request waited for a model; retry in a moment")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(504, "load_timeout",
                                  "timed out waiting for the model to become ready")
            if not self.gating and backend.state in ("stopped", "failed"):
                reply = self._ensure().wait(remaining)
                if reply is not None and not reply.ok:
                    raise self._ensure_failed(reply)
                continue
            self.view.wait_for_change(min(remaining, 1.0))

    def _ensure(self) -> AsyncResult:
        """The one Ensure in progress, started if none is."""
        if self._ensuring is None:
            result: AsyncResult = AsyncResult()
            self._ensuring = result
            pending = self.commands.send(p.Ensure)

            def wait() -> None:
                try:
                    result.set(pending.reply())
                finally:
                    self._ensuring = None
                    self.view.notify()

            gevent.spawn(wait)
        return self._ensuring

    def _ensure_failed(self, reply: p.Reply) -> Unavailable:
        error = reply.error or {}
        code, message = error.get("code", "error"), error.get("message", "loading failed")
        if code in ("no_model", "unavailable", "config_error"):
            return Unavailable(503, code, message)
        model = reply.data.get("model") or self.config.default_model
        return Unavailable(503, "default_model_failed", (
            f"loading the default model {model} failed: {message}. Fix it, or run "
            "`llmctl switch <model>`"))
