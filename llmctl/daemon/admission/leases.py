"""What is busy: the leases of proxied requests and the switches and stops under way.

    lease = hub.gate.acquire()            # waits for a ready backend (or raises Unavailable)
    with lease:                           # an exception anywhere in the block releases it
        conn, response = send(lease.address, ...)
        return Relay(..., lease, ...)     # Relay.__init__ calls lease.hand_to(self): the
                                          # response's close() releases it from then on

A proxied request holds a Lease from the gate's `acquire()` until its response is over, and
nothing else counts in-flight requests. InFlight is the one record of it: the gate (gate.py)
changes it, the scheduler (scheduler.py) reads it to decide when a switch or an idle unload
may start. Both import this module and neither imports the other's.

A route may set `lease.keep_alive` (seconds, 0, or idle.PIN) before the lease is released: it
replaces the model's idle timeout from then on (Ollama's `keep_alive`, see idle.py).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from llmctl.daemon.admission.model_queue import Ticket


class Abortable(Protocol):
    def abort(self) -> None: ...

    def close(self) -> None: ...


class InFlight:
    def __init__(self) -> None:
        self.leases: set[Lease] = set()
        self.gating: set[str] = set()  # accepted switch/stop commands not yet answered
        self.draining = 0  # switches and stops waiting for the last request to end

    @property
    def count(self) -> int:
        return len(self.leases)


class Lease:
    """One proxied request's right to the backend at `address`, which serves `model`."""

    def __init__(self, on_release: Callable[[Lease], None], address: tuple[str, int],
                 model: str | None = None, ticket: Ticket | None = None):
        self._on_release = on_release
        self.address, self.model, self.ticket = address, model, ticket
        self.relay: Abortable | None = None
        self.released = False
        self.keep_alive: float | None = None  # see the module docstring

    def hand_to(self, relay: Abortable) -> None:
        """The response outlives the with-block: its close() releases the lease."""
        self.relay = relay

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._on_release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None and self.relay is not None:
            self.relay.close()  # a response that will never be iterated
        if kind is not None or self.relay is None:
            self.release()
