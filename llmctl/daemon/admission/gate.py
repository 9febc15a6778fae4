"""The in-flight gate: who may use the backend, and what is busy. Only the proxy sees
requests, so it alone decides.

The lease rule (leases.py): a proxied request holds a Lease from `acquire()` until its
response is over, and nothing else counts in-flight requests.

- `in_flight` is the number of unreleased leases;
- a switch or stop (`begin()`) is refused while it is non-zero (unless forced: then every
  leased response is cut off first, since llama-server does not exit on SIGTERM while a
  request is open);
- once one is accepted (`gating` non-empty), `acquire()` waits until the backend is ready
  again or the command failed, bounded by the load timeout;
- which model a request goes to, the loads and switches requests cause (with nothing loaded,
  one Ensure that concurrent requests share), the fair queue and the idle unload are the
  scheduler's (scheduler.py): `acquire(requested)` asks it to admit the request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from llmctl.daemon.admission.leases import InFlight, Lease
from llmctl.daemon.admission.scheduler import Scheduler
from llmctl.daemon.api.backend_view import BackendView
from llmctl.daemon.api.config_view import ConfigView
from llmctl.daemon.api.errors import Unavailable
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.commands import CommandClient, Pending

__all__ = ["Busy", "Gate", "Lease", "Unavailable"]

log = logging.getLogger("llmctld.proxy")

# A client that just read a stream's last event may switch before the proxy has read the
# upstream's end-of-stream and released that request: give finishing requests this long.
BUSY_GRACE = 0.5


class Busy(Exception):
    def __init__(self, in_flight: int):
        self.in_flight = in_flight
        super().__init__(
            f"{in_flight} request{'s are' if in_flight != 1 else ' is'} in flight; retry when "
            "they finish, or pass force=1 to cut them off")


class Gate:
    def __init__(self, view: BackendView, commands: CommandClient, config: ConfigView):
        self.view, self.commands, self.config = view, commands, config
        self.busy = InFlight()
        self.requests_total = 0
        self.scheduler = Scheduler(view, commands, config, self.busy)

    @property
    def in_flight(self) -> int:
        return self.busy.count

    @property
    def gating(self) -> set[str]:
        """Accepted switch/stop commands not yet answered."""
        return self.busy.gating

    def finished(self, rid: str) -> None:
        """A command got its reply (CommandClient tells us)."""
        self.gating.discard(rid)
        self.view.notify()

    def begin(self, kind: type[p.Command], force: bool, **fields: Any) -> Pending:
        """Start a switch or stop: refused while requests are in flight unless forced (then
        they are cut, and the lifecycle worker lets no KV-cache save delay it)."""
        if self.in_flight and not force:
            deadline = time.monotonic() + BUSY_GRACE
            self.busy.draining += 1
            try:
                while self.in_flight and (remaining := deadline - time.monotonic()) > 0:
                    self.view.wait_for_change(remaining)
            finally:
                self.busy.draining -= 1
            if self.in_flight:
                raise Busy(self.in_flight)
        for lease in list(self.busy.leases):
            if lease.relay is not None:
                lease.relay.abort()
        if force:
            fields["force"] = True
        pending = self.commands.send(kind, **fields)
        if not pending.answered:  # e.g. refused at once: the channel is closed
            self.gating.add(pending.id)
        return pending

    def acquire(self, requested: str | None = None) -> Lease:
        """A lease on a ready backend for one proxied request; `requested` is the model name
        the request gave, if any (it counts only with daemon.route_by_model). Waits for its
        turn and its model (scheduler.py); raises Unavailable."""
        ticket, address, model = self.scheduler.admit(requested)
        lease = Lease(self._released, address, model, ticket)
        self.busy.leases.add(lease)
        self.requests_total += 1
        return lease

    def _released(self, lease: Lease) -> None:
        self.busy.leases.discard(lease)
        self.scheduler.released(lease)  # the queue and the idle clock (they wake what they must)
        if self.busy.draining and not self.busy.leases:
            self.view.notify()  # the switch or stop waiting in begin() may go now
