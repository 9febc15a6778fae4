"""llmctl.daemon.ipc.protocol: typed records, one encode/decode place, protocol errors answered."""

from __future__ import annotations

import pytest

from llmctl.daemon.ipc import protocol as p


@pytest.mark.parametrize("message", [
    p.Switch("a.1", "qwen"), p.Switch("a.7", "big", fit=True, fit_check=False), p.Stop("a.2"), p.Status("a.3"), p.Ensure("a.4"),
    p.Reload("a.5"), p.RestartProxy("a.6"), p.Event("a.1", "progress", {"percent": 5.0}),
    p.Reply("a.1", True, {"model": "qwen"}), p.error_reply("a.1", "not_found", "no such"),
    p.State({"state": "ready"}), p.Workers({"proxy": {"pid": 1}}), p.ReloadConfig(),
    p.RpcHealth([{"name": "gpu-a", "address": "10.0.0.2:50052", "state": "down",
                  "error": "connection refused", "since": 1.5}]), p.RpcHealth([]),
    p.Shutdown(), p.Ready(42), p.Failed("RuntimeError: boom"),
    p.Switch("a.7", "qwen", pin=True, force=True), p.Stop("a.8", 30, force=True),
    p.Cache("a.9"), p.Cache("a.10", "clear", "qwen"), p.KvReuse("qwen", "0123abcd", 2000, 1990),
])
def test_every_kind_round_trips(message: p.Message) -> None:
    wire = p.encode(message)
    assert wire["type"] == message.KIND
    assert p.decode(wire) == message


def test_every_kind_is_listed_once() -> None:
    assert len(p.KINDS) == len({cls.KIND for cls in p.KINDS.values()})
    assert "malformed" not in p.KINDS  # decode's verdict, never sent


@pytest.mark.parametrize("raw, reason", [
    ({"type": "teleport", "id": "x"}, "unknown message type"),
    ({"type": "switch", "id": "x"}, "lacks 'model'"),
    ({"type": "switch", "id": "x", "model": 3}, "bad 'model'"),
    ({"type": "ready", "pid": True}, "bad 'pid'"),
    ({"type": "reply", "id": "x", "ok": True, "extra": 1}, "unknown fields"),
    ([1, 2], "JSON object"),
    ({"id": "x"}, "unknown message type"),
])
def test_malformed_messages_decode_to_a_reason(raw: object, reason: str) -> None:
    message = p.decode(raw)
    assert isinstance(message, p.Malformed)
    assert reason in message.reason


def test_malformed_keeps_the_id_so_it_can_be_answered() -> None:
    assert p.decode({"type": "switch", "id": "x"}).id == "x"  # type: ignore[attr-defined]


def test_dispatch_calls_the_handler_for_the_type() -> None:
    seen: list[p.Message] = []
    p.dispatch({p.Stop: seen.append}, p.Stop("1"), "test")
    assert seen == [p.Stop("1")]


def test_dispatch_answers_unhandled_and_malformed_commands() -> None:
    answers: list[p.Reply] = []
    p.dispatch({}, p.Stop("1"), "test", answer=answers.append)
    p.dispatch({}, p.decode({"type": "nope", "id": "2"}), "test", answer=answers.append)
    p.dispatch({}, p.decode({"type": "nope"}), "test", answer=answers.append)  # no id: logged
    p.dispatch({}, p.Reply("3", True), "test", answer=answers.append)  # never answer a reply
    assert [(a.id, a.ok, (a.error or {})["code"]) for a in answers] == [
        ("1", False, "bad_message"), ("2", False, "bad_message")]
