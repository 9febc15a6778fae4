"""llmctl.daemon.relay.overrides: which bodies are parsed, and strip/defaults/force on them."""

from __future__ import annotations

import json

import pytest

from llmctl.daemon.relay.overrides import (
    PARSE_LIMIT,
    Overrides,
    json_object,
    requested_model,
    rewrite,
)

CHAT = json.dumps({"model": "coder", "messages": [{"role": "user", "content": "hi"}],
                   "temperature": 1.5, "presence_penalty": 0.4}).encode()


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "application/vnd.api+json", None, "",
    "application/x-www-form-urlencoded",  # what `curl -d` sends
])
def test_json_bodies_are_parsed(content_type: str | None) -> None:
    assert json_object(CHAT, content_type) == json.loads(CHAT)


@pytest.mark.parametrize("body, content_type", [
    (CHAT, "multipart/form-data; boundary=x"),
    (b"--x\r\nContent-Disposition: form-data", None),
    (b"[1, 2]", "application/json"),
    (b'{"broken": ', "application/json"),
    (b"\xff\xfe{", "application/json"),
    (b"", "application/json"),
    (None, "application/json"),
    (b"{" + b" " * PARSE_LIMIT + b"}", "application/json"),
])
def test_other_bodies_are_left_alone(body: bytes | None, content_type: str | None) -> None:
    assert json_object(body, content_type) is None


def test_requested_model() -> None:
    assert requested_model({"model": " coder "}) == "coder"
    assert requested_model({"model": ""}) is None
    assert requested_model({"model": 3}) is None
    assert requested_model({}) is None
    assert requested_model(None) is None


def test_strip_then_defaults_then_force() -> None:
    overrides = Overrides.of({"request": {
        "defaults": {"temperature": 0.6, "top_p": 0.95, "seed": 7},
        "force": {"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}},
        "strip": ["presence_penalty", "top_p"]}})
    assert overrides is not None
    body = {"model": "coder", "temperature": 1.5, "presence_penalty": 0.4, "top_p": 0.5,
            "top_k": 99, "seed": None}
    assert overrides.apply(body) == {
        "model": "coder",
        "temperature": 1.5,  # the client's own value stays: a default only fills in
        "top_p": 0.95,  # stripped, then filled in by the default
        "seed": 7,  # null counts as left out
        "top_k": 20,  # forced
        "chat_template_kwargs": {"enable_thinking": False},
    }
    assert body["top_k"] == 99, "the caller's body is not modified"


def test_a_model_without_overrides_has_none() -> None:
    assert Overrides.of({"request": {"defaults": {}, "force": {}, "strip": []}}) is None
    assert Overrides.of({}) is None
    assert Overrides.of(None) is None


def test_rewrite_keeps_unicode_and_is_compact() -> None:
    overrides = Overrides({}, {"top_k": 1}, ())
    out = rewrite({"messages": [{"content": "héllo ✓"}]}, overrides)
    assert out == '{"messages":[{"content":"héllo ✓"}],"top_k":1}'.encode()
