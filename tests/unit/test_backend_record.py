"""core.state.Backend: fields declared once, and transition() refuses every illegal move."""

from __future__ import annotations

import itertools

import pytest

from llmctl.core.state import (
    BACKEND_STATES,
    FIELDS,
    LEGAL_MOVES,
    Backend,
    IllegalTransition,
    empty_backend,
)

LEGAL = {("stopped", "starting"), ("stopped", "failed"),
         ("starting", "ready"), ("starting", "stopping"), ("starting", "failed"),
         ("starting", "stopped"),
         ("ready", "stopping"), ("ready", "failed"),
         ("stopping", "stopped"), ("stopping", "failed"),
         ("failed", "starting"), ("failed", "stopped"), ("failed", "failed")}


def in_state(state: str) -> Backend:
    record = Backend(generation=7)
    record.state = state  # set up directly: the move under test is the next one
    return record


def test_the_diagram_is_what_the_code_allows() -> None:
    assert {(a, b) for a, targets in LEGAL_MOVES.items() for b in targets} == LEGAL


@pytest.mark.parametrize("start, to", sorted(LEGAL))
def test_legal_moves(start: str, to: str) -> None:
    record = in_state(start)
    record.transition(to)
    assert record.state == to and record.generation == 7


@pytest.mark.parametrize("start, to", sorted(
    set(itertools.product(BACKEND_STATES, BACKEND_STATES)) - LEGAL))
def test_every_illegal_move_is_refused_loudly(start: str, to: str) -> None:
    record = in_state(start)
    before = record.to_dict()
    with pytest.raises(IllegalTransition, match=f"from {start} to {to}"):
        record.transition(to)
    assert record.to_dict() == before  # nothing changed


def test_unknown_state_is_refused() -> None:
    with pytest.raises(IllegalTransition):
        Backend().transition("exploded")


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(TypeError, match="colour"):
        Backend().transition("starting", colour="red")
    with pytest.raises(TypeError):
        Backend().transition("starting", state="ready")


def test_fresh_states_forget_the_old_process_but_not_the_generation() -> None:
    record = Backend(generation=3)
    record.transition("starting", model="m", pid=10, port=1234)
    record.transition("ready", load_seconds=1.5)
    assert (record.pid, record.port, record.load_seconds) == (10, 1234, 1.5)
    record.transition("stopping")
    assert record.pid == 10  # still there until it is gone
    record.transition("stopped")
    assert record.to_dict() == {**empty_backend(), "generation": 3}


def test_failure_keeps_what_it_is_given() -> None:
    record = Backend()
    record.transition("starting", model="m", pid=10)
    record.transition("failed", model="m", error="boom", exit_code=1, log_tail=["x"])
    assert (record.state, record.model, record.pid, record.error) == ("failed", "m", None,
                                                                      "boom")


def test_dict_forms_use_the_one_declaration() -> None:
    assert tuple(Backend().to_dict()) == FIELDS
    assert "cmdline" not in Backend().public() and "cmdline" in FIELDS
    assert Backend.from_dict({"state": "ready", "model": "m", "bogus": 1}).model == "m"
    with pytest.raises(ValueError):
        Backend.from_dict({"state": "exploded"})
