"""llmctl.daemon.admission.model_queue: the swap-aware fair queue, driven as the lease gate drives it."""

from __future__ import annotations

import pytest

from llmctl.daemon.admission.model_queue import ModelQueue, Refusal, Ticket, View


class Sim:
    """A backend as the queue sees it: one current model, switches that take effect when
    `finish_switch` is called, and a log of every switch."""

    def __init__(self, current: str | None, depth: int = 100, timeout: float = 60.0):
        self.queue = ModelQueue(depth, timeout)
        self.current, self.switching, self.now = current, False, 0.0
        self.switches: list[str] = []
        self.pending: str | None = None

    @property
    def view(self) -> View:
        return View(self.pending or self.current, self.switching)

    def arrive(self, model: str) -> Ticket:
        ticket = self.queue.join(model, self.now, self.view)
        self.step()
        return ticket

    def step(self) -> None:
        target = self.queue.step(self.view, self.now)
        if target is not None:
            self.switches.append(target)
            self.pending, self.switching = target, True
            self.queue.step(self.view, self.now)  # the gate steps again after starting one

    def finish_switch(self) -> None:
        assert self.pending is not None
        self.current, self.pending, self.switching = self.pending, None, False
        self.step()

    def done(self, ticket: Ticket) -> None:
        self.queue.release(ticket)
        self.step()


def test_a_request_for_the_current_model_goes_straight_through() -> None:
    sim = Sim("a")
    assert sim.arrive("a").state == "admitted"
    assert sim.switches == []


def test_a_request_for_another_idle_model_switches_at_once() -> None:
    sim = Sim("a")
    ticket = sim.arrive("b")
    assert sim.switches == ["b"]
    assert ticket.state == "admitted"  # admitted to the loading model; it waits for ready


def test_nothing_loaded_loads_the_requested_model() -> None:
    sim = Sim(None)
    assert sim.arrive("a").state == "admitted" and sim.switches == ["a"]


def test_another_model_waits_for_the_requests_in_flight() -> None:
    sim = Sim("a")
    stream = sim.arrive("a")
    b = sim.arrive("b")
    assert (b.state, sim.switches) == ("waiting", [])
    sim.done(stream)
    assert (b.state, sim.switches) == ("admitted", ["b"])


def test_current_model_requests_wait_behind_a_queued_switch() -> None:
    sim = Sim("a")
    stream = sim.arrive("a")
    b = sim.arrive("b")
    late_a = sim.arrive("a")
    assert late_a.state == "waiting", "no starvation: b's turn comes first"
    sim.done(stream)
    assert sim.switches == ["b"] and b.state == "admitted" and late_a.state == "waiting"
    sim.finish_switch()
    sim.done(b)
    assert sim.switches == ["b", "a"] and late_a.state == "admitted"


def test_one_switch_serves_every_request_queued_for_the_model() -> None:
    sim = Sim("a")
    stream = sim.arrive("a")
    bs = [sim.arrive("b") for _ in range(5)]
    sim.done(stream)
    assert sim.switches == ["b"]
    assert all(t.state == "admitted" for t in bs)


def test_requests_arriving_while_the_new_model_loads_join_it() -> None:
    sim = Sim("a")
    stream = sim.arrive("a")
    sim.arrive("b")
    sim.done(stream)
    assert sim.switching
    assert sim.arrive("b").state == "admitted"
    assert sim.switches == ["b"]


def test_groups_are_served_in_order_of_their_first_request() -> None:
    sim = Sim("a")
    stream = sim.arrive("a")
    c, b = sim.arrive("c"), sim.arrive("b")
    c2 = sim.arrive("c")  # joins c's group, ahead of b
    sim.done(stream)
    assert sim.switches == ["c"] and c.state == c2.state == "admitted"
    sim.finish_switch()
    sim.done(c)
    assert sim.switches == ["c"], "c2 still runs"
    sim.done(c2)
    assert sim.switches == ["c", "b"] and b.state == "admitted"


def test_interleaved_requests_cost_one_switch_per_model_not_per_request() -> None:
    """b, a, b, a, ... arrive behind a long stream on a: FIFO would switch ten times."""
    sim = Sim("a")
    stream = sim.arrive("a")
    tickets = [sim.arrive(model) for model in "babababababa"]
    sim.done(stream)
    assert sim.switches == ["b"]
    assert [t.state for t in tickets if t.model == "b"] == ["admitted"] * 6
    sim.finish_switch()
    for ticket in [t for t in tickets if t.model == "b"]:
        sim.done(ticket)
    assert sim.switches == ["b", "a"]
    assert all(t.state == "admitted" for t in tickets if t.model == "a")


def test_steady_alternating_traffic_switches_once_per_turn() -> None:
    """Two clients alternating a/b, each sending its next request while its last one runs:
    every turn serves all that queued for the model, and turns alternate."""
    sim = Sim("a")
    running = [sim.arrive("a")]
    served = 0
    for _ in range(20):
        running += [sim.arrive("b"), sim.arrive("a")]
        for ticket in [t for t in running if t.state == "admitted"]:
            if sim.switching:
                sim.finish_switch()
            sim.done(ticket)
            running.remove(ticket)
            served += 1
    assert served >= 30
    assert len(sim.switches) <= served // 2 + 1, sim.switches
    assert all(x != y for x, y in zip(sim.switches, sim.switches[1:], strict=False))


def test_a_full_queue_refuses_with_429_naming_the_busy_model() -> None:
    sim = Sim("a")
    sim.queue.depth = 2
    sim.arrive("a")
    sim.arrive("b"), sim.arrive("b")
    with pytest.raises(Refusal) as info:
        sim.arrive("b")
    refusal = info.value
    assert (refusal.status, refusal.code, refusal.retry_after) == (429, "queue_full", 5)
    assert "a is busy serving 1 request" in refusal.message
    assert "daemon.queue_depth is 2" in refusal.message


def test_a_request_waiting_too_long_expires_with_503() -> None:
    sim = Sim("a", timeout=30.0)
    stream = sim.arrive("a")
    b = sim.arrive("b")
    assert sim.queue.next_deadline() == 30.0
    sim.now = 29.9
    sim.step()
    assert b.state == "waiting"
    sim.now = 30.0
    sim.step()
    assert b.state == "expired" and b.refusal is not None
    assert (b.refusal.status, b.refusal.code) == (503, "queue_timeout")
    assert b.refusal.message.startswith("waited 30s for b (daemon.queue_timeout): a is busy")
    assert sim.queue.waiting == 0
    sim.done(stream)
    assert sim.switches == [], "nobody waits for b any more: no switch"


def test_a_released_waiter_gives_up_its_place() -> None:
    sim = Sim("a")
    stream = sim.arrive("a")
    b = sim.arrive("b")
    sim.queue.release(b)
    sim.queue.release(b)  # twice is harmless
    assert b.state == "released" and sim.queue.waiting == 0
    sim.done(stream)
    assert sim.switches == []
    assert sim.arrive("a").state == "admitted"


def test_no_switch_starts_while_a_stop_or_switch_is_under_way() -> None:
    queue = ModelQueue(10, 60)
    queue.join("b", 0, View("a", switching=True))
    assert queue.step(View("a", switching=True), 0) is None
    assert queue.step(View("a", switching=False), 0) == "b"


def test_line_reports_the_groups() -> None:
    sim = Sim("a")
    sim.arrive("a")
    sim.arrive("b"), sim.arrive("c"), sim.arrive("b")
    assert sim.queue.line() == [("b", 2), ("c", 1)]
    assert (sim.queue.waiting, sim.queue.admitted) == (3, 1)
