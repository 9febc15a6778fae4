"""The lifecycle-policy keys of core.config: idle unload, stall timeout, routing, the queue,
aliases and request overrides. Errors name file, line and key like every other config error."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from llmctl.core.config import (
    ConfigError,
    idle_unload_seconds,
    load_global,
    load_model_file,
    merge_model,
    queue_timeout_seconds,
)

Write = Callable[[str, str], Path]


def global_error(write_text: Write, text: str) -> tuple[Path, ConfigError]:
    path = write_text("config/default.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_global(path)
    return path, info.value


def model_error(write_text: Write, text: str) -> tuple[Path, ConfigError]:
    path = write_text("gguf/m/config.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_model_file(path)
    return path, info.value


MODEL = "id: m\nmodel_file: m.gguf\n"


def test_defaults(tmp_path: Path) -> None:
    cfg = load_global(tmp_path / "absent.yaml")
    assert cfg.data["server"]["stallTimeoutMs"] == 120_000
    daemon = cfg.data["daemon"]
    assert (daemon["idle_unload"], daemon["route_by_model"], daemon["queue_depth"]) == (
        None, False, 64)
    assert queue_timeout_seconds(cfg) == 300.0


def test_policy_keys_are_read(write_text: Write) -> None:
    cfg = load_global(write_text("config/default.yaml", """\
        server: {stallTimeoutMs: 60000}
        daemon: {idle_unload: 30m, route_by_model: true, queue_timeout: 90s, queue_depth: 3}
        """))
    assert cfg.data["server"]["stallTimeoutMs"] == 60000
    assert cfg.data["daemon"]["route_by_model"] is True
    assert queue_timeout_seconds(cfg) == 90.0
    doc, data = load_model_file(write_text("gguf/m/config.yaml", MODEL))
    assert idle_unload_seconds(merge_model(cfg, data)) == 1800.0


@pytest.mark.parametrize("own, expected", [("idle_unload: never\n", None),
                                           ("idle_unload: 0\n", None),
                                           ("idle_unload: 2s\n", 2.0), ("", 600.0)])
def test_a_model_overrides_idle_unload(write_text: Write, own: str, expected: float | None,
                                       ) -> None:
    cfg = load_global(write_text("config/default.yaml", "daemon: {idle_unload: 10m}\n"))
    _, data = load_model_file(write_text("gguf/m/config.yaml", MODEL + own))
    assert idle_unload_seconds(merge_model(cfg, data)) == expected


def test_no_idle_unload_by_default(write_text: Write, tmp_path: Path) -> None:
    _, data = load_model_file(write_text("gguf/m/config.yaml", MODEL))
    assert idle_unload_seconds(merge_model(load_global(tmp_path / "absent"), data)) is None


def test_bad_idle_unload_names_file_line_key(write_text: Write) -> None:
    path, err = global_error(write_text, "daemon:\n  port: 1234\n  idle_unload: soon\n")
    assert (err.file, err.line, err.key) == (str(path), 3, "daemon.idle_unload")
    assert "not a duration" in err.message and "30m" in err.message


@pytest.mark.parametrize("value", ["0", "never", "-1s"])
def test_queue_timeout_must_be_positive(write_text: Write, value: str) -> None:
    _, err = global_error(write_text, f"daemon: {{queue_timeout: {value!r}}}\n")
    assert err.key == "daemon.queue_timeout"


def test_queue_depth_is_bounded(write_text: Write) -> None:
    _, err = global_error(write_text, "daemon: {queue_depth: 0}\n")
    assert (err.key, err.message) == ("daemon.queue_depth", "must be at least 1, got 0")


def test_stall_timeout_zero_is_off_negative_is_an_error(write_text: Write) -> None:
    assert load_global(write_text("config/default.yaml", "server: {stallTimeoutMs: 0}\n"))
    _, err = global_error(write_text, "server: {stallTimeoutMs: -5}\n")
    assert err.key == "server.stallTimeoutMs"


def test_route_by_model_is_a_boolean(write_text: Write) -> None:
    _, err = global_error(write_text, "daemon: {route_by_model: sometimes}\n")
    assert err.key == "daemon.route_by_model" and "true or false" in err.message


def test_aliases_and_request_are_merged(write_text: Write, tmp_path: Path) -> None:
    _, data = load_model_file(write_text("gguf/m/config.yaml", MODEL + textwrap.dedent("""\
        aliases: [gpt-4o-mini, "coder:7b", team/coder]
        request:
          defaults: {temperature: 0.6, stop: ["</s>"]}
          force: {top_k: 20, chat_template_kwargs: {enable_thinking: false}}
          strip: [presence_penalty]
        """)))
    merged = merge_model(load_global(tmp_path / "absent"), data)
    assert merged["aliases"] == ["gpt-4o-mini", "coder:7b", "team/coder"]
    assert merged["request"] == {
        "defaults": {"temperature": 0.6, "stop": ["</s>"]},
        "force": {"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}},
        "strip": ["presence_penalty"]}


def test_request_sections_default_to_empty(write_text: Write, tmp_path: Path) -> None:
    _, data = load_model_file(write_text("gguf/m/config.yaml", MODEL + "request: {strip: [seed]}\n"))
    merged = merge_model(load_global(tmp_path / "absent"), data)
    assert merged["request"] == {"defaults": {}, "force": {}, "strip": ["seed"]}
    assert merged["aliases"] == []


@pytest.mark.parametrize("text, key, words", [
    ("aliases: coder\n", "aliases", "list of names"),
    ("aliases: [local]\n", "aliases", "reserved"),
    ("aliases: [m]\n", "aliases", "id already"),
    ("aliases: [a, a]\n", "aliases", "twice"),
    ("aliases: ['bad name']\n", "aliases", "not a usable name"),
    ("request: {force: {stream: false}}\n", "request.force", "cannot be overridden"),
    ("request: {defaults: {model: x}}\n", "request.defaults", "cannot be overridden"),
    ("request: {strip: [model]}\n", "request.strip", "cannot be stripped"),
    ("request: {strip: temperature}\n", "request.strip", "list of request field names"),
    ("request: {force: [temperature]}\n", "request.force", "mapping"),
    ("request: {defaults: {when: 2024-01-01}}\n", "request.defaults", "plain JSON"),
    ("request: {forced: {}}\n", "request.forced", "did you mean 'force'"),
    ("idle_unload: later\n", "idle_unload", "not a duration"),
])
def test_model_policy_errors_name_the_key(write_text: Write, text: str, key: str, words: str,
                                          ) -> None:
    path, err = model_error(write_text, MODEL + text)
    assert (err.file, err.line, err.key) == (str(path), 3, key), err
    assert words in err.message
