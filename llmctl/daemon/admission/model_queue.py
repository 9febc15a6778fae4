"""The swap-aware, fair, bounded queue behind request routing (and behind every load a request
triggers: the default model, the wake after an idle unload).

One model runs at a time, and nothing in flight is ever cut. So a request for a model that is
not the current one waits until the current model's requests are done, then for the switch.
The policy:

- Waiting requests are grouped by model; groups stand in line in the order their first request
  arrived. A request joins its model's group wherever that group stands, so one switch serves
  every request queued for that model: interleaved A/B traffic costs one switch per turn, not
  one per request (no thrash).
- A request for the current model goes straight through only while nobody waits. Once a
  switch is queued, requests for the current model wait behind it: the other model's turn
  comes once the requests already admitted finish (no starvation).
- When no admitted request is left and no switch or stop is under way, the head group's model
  is the one to switch to; as soon as it is the current model (loading counts), the whole group
  is admitted at once.
- Bounded: at most `depth` requests wait (one more is refused with 429), each for at most
  `timeout` seconds (then 503); both refusals say which model is busy and why, and carry a
  Retry-After.

Pure policy: no clock, no I/O, no gevent. The caller passes `now` and a View of the backend,
waits on its own events, and starts the switches that `step` names.
"""

from __future__ import annotations

from dataclasses import dataclass

RETRY_AFTER = 5  # seconds; a client may retry sooner, but a turn rarely ends faster


@dataclass(frozen=True)
class View:
    """What the queue needs to know of the backend."""

    current: str | None  # the model serving, loading, or being switched to; None: none
    switching: bool  # a switch or stop is under way (no new switch may start)


@dataclass(eq=False)
class Ticket:
    """One request's place: waiting, then admitted (may proceed to the backend) and finally
    released; or expired (waited too long)."""

    model: str
    arrived: float
    deadline: float
    state: str = "waiting"  # waiting | admitted | released | expired
    refusal: Refusal | None = None


class Refusal(Exception):
    """The queue turns a request away: an OpenAI-style error with a Retry-After."""

    def __init__(self, status: int, code: str, message: str, retry_after: int = RETRY_AFTER):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = (status, code, message,
                                                                   retry_after)


class ModelQueue:
    def __init__(self, depth: int, timeout: float):
        self.depth = depth
        self.timeout = timeout
        self._groups: dict[str, list[Ticket]] = {}  # insertion order is the line
        self._admitted: dict[str, int] = {}  # model -> admitted tickets not yet released
        self.waiting = 0  # tickets in line (kept as counts: every request reads them)
        self.admitted = 0

    # --- what it holds -------------------------------------------------------------------------

    def line(self) -> list[tuple[str, int]]:
        """(model, waiting requests) per group, head first: for /status."""
        return [(model, len(group)) for model, group in self._groups.items()]

    # --- requests ------------------------------------------------------------------------------

    def join(self, model: str, now: float, view: View) -> Ticket:
        """A request for `model` arrives. Admitted at once when its model is current and
        nobody waits; otherwise in line (call `step` next). Raises Refusal when the line is
        full."""
        if not self._groups and model == view.current and not view.switching:
            return self._admit(Ticket(model, now, now))
        if self.waiting >= self.depth:
            raise Refusal(429, "queue_full", (
                f"{self._busy_text(view)}, and {self.waiting} requests are already waiting "
                f"(daemon.queue_depth is {self.depth}); retry in a few seconds"))
        ticket = Ticket(model, now, now + self.timeout)
        self._groups.setdefault(model, []).append(ticket)
        self.waiting += 1
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The request is done (answered, failed, or its client went away): give up its place
        or its admission. Safe to call more than once."""
        if ticket.state == "waiting":
            group = self._groups.get(ticket.model, [])
            if ticket in group:
                group.remove(ticket)
                self.waiting -= 1
            if not group:
                self._groups.pop(ticket.model, None)
        elif ticket.state == "admitted":
            self.admitted -= 1
            left = self._admitted.get(ticket.model, 0) - 1
            if left > 0:
                self._admitted[ticket.model] = left
            else:
                self._admitted.pop(ticket.model, None)
        if ticket.state in ("waiting", "admitted"):
            ticket.state = "released"

    def step(self, view: View, now: float) -> str | None:
        """Expire tickets past their deadline, admit the head group once its model is current,
        and return the model to switch to now (None: nothing to start yet)."""
        self._expire(view, now)
        head = next(iter(self._groups), None)
        if head is None:
            return None
        if head == view.current:
            for ticket in self._groups.pop(head):
                self.waiting -= 1
                self._admit(ticket)
            return None
        if view.switching or self.admitted:
            return None  # the current model's turn is not over
        return head

    def next_deadline(self) -> float | None:
        return min((t.deadline for g in self._groups.values() for t in g), default=None)

    # --- internals -----------------------------------------------------------------------------

    def _admit(self, ticket: Ticket) -> Ticket:
        ticket.state = "admitted"
        self._admitted[ticket.model] = self._admitted.get(ticket.model, 0) + 1
        self.admitted += 1
        return ticket

    def _expire(self, view: View, now: float) -> None:
        for model, group in list(self._groups.items()):
            late = [t for t in group if now >= t.deadline]
            for ticket in late:
                group.remove(ticket)
                self.waiting -= 1
                ticket.state = "expired"
                ticket.refusal = Refusal(503, "queue_timeout", (
                    f"waited {now - ticket.arrived:.0f}s for {model} (daemon.queue_timeout): "
                    f"{self._busy_text(view)}; retry in a few seconds"))
            if not group:
                del self._groups[model]

    def _busy_text(self, view: View) -> str:
        if view.current is None:
            return "no model can be loaded yet (a switch or stop is under way)"
        busy = self._admitted.get(view.current, 0)
        if busy:
            return (f"{view.current} is busy serving {busy} request{'s' if busy != 1 else ''}"
                    " that must finish first")
        return f"{view.current} is {'being switched' if view.switching else 'in use'}"
