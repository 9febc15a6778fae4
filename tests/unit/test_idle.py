"""llmctl.daemon.admission.idle: when the running model is due for an idle unload."""

from __future__ import annotations

from llmctl.daemon.admission.idle import PIN, IdleClock


def test_due_counts_from_the_last_activity() -> None:
    clock = IdleClock()
    clock.reset("a", 100.0)
    assert clock.due_at(30.0, pinned=False) == 130.0
    clock.touch(120.0)
    assert clock.due_at(30.0, pinned=False) == 150.0


def test_never_pinned_or_nothing_loaded() -> None:
    clock = IdleClock()
    assert clock.due_at(30.0, pinned=False) is None  # no model
    clock.reset("a", 0.0)
    assert clock.due_at(None, pinned=False) is None
    assert clock.due_at(30.0, pinned=True) is None


def test_a_request_keep_alive_replaces_the_configured_timeout_until_the_model_changes() -> None:
    clock = IdleClock()
    clock.reset("a", 0.0)
    clock.touch(10.0, keep_alive=300.0)
    assert clock.due_at(30.0, pinned=False) == 310.0
    clock.touch(20.0)  # a request without one keeps it
    assert clock.due_at(30.0, pinned=False) == 320.0
    clock.touch(30.0, keep_alive=0.0)
    assert clock.due_at(None, pinned=False) == 30.0
    clock.touch(40.0, keep_alive=PIN)
    assert clock.due_at(30.0, pinned=False) is None
    clock.reset("a", 50.0)  # the same model again (a proxy restart): keeps it
    assert clock.due_at(30.0, pinned=False) is None
    clock.reset("b", 60.0)
    assert clock.due_at(30.0, pinned=False) == 90.0


def test_a_request_for_a_model_the_clock_has_not_seen_yet_starts_it() -> None:
    clock = IdleClock()
    clock.touch(5.0, keep_alive=0.0, model="a")
    assert (clock.model, clock.due_at(30.0, pinned=False)) == ("a", 5.0)
    clock.touch(6.0, model="b")  # another model: its own timeout, not a's keep-alive
    assert (clock.model, clock.due_at(30.0, pinned=False)) == ("b", 36.0)
