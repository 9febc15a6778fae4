"""llmctl.core.config: defaults, precedence, and errors that name file, line and key."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest

from llmctl.core.config import (
    DEFAULTS,
    ConfigError,
    load_global,
    load_model_file,
    merge_model,
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


# --- defaults and precedence ----------------------------------------------------------------


def test_missing_global_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_global(tmp_path / "config" / "default.yaml")
    assert cfg.exists is False
    assert cfg.data == DEFAULTS
    assert cfg.section("server")["port"] == 11435
    assert cfg.section("daemon")["port"] == 16384
    assert cfg.section("llama")["flash_attn"] == "auto"
    assert cfg.section("llama")["mmap"] is False


def test_defaults_are_copied_not_shared(tmp_path: Path) -> None:
    cfg = load_global(tmp_path / "absent.yaml")
    cfg.data["llama"]["extra_args"].append("--mutated")
    assert DEFAULTS["llama"]["extra_args"] == []


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_global_file_is_defaults(write_text: Write, text: str) -> None:
    cfg = load_global(write_text("config/default.yaml", text))
    assert cfg.exists is True
    assert cfg.data == DEFAULTS


def test_precedence_defaults_global_model(write_text: Write) -> None:
    before = copy.deepcopy(DEFAULTS)
    global_file = write_text("config/default.yaml", """\
        server:
          port: 20000
        llama:
          ctx_size: 4096
          parallel: 2
          extra_args: ["--global-flag"]
        pi:
          model:
            maxTokens: 100
            input: [text, image]
        """)
    model_file = write_text("gguf/m/config.yaml", """\
        id: my-model
        model_file: m.gguf
        llama:
          ctx_size: 8192
          extra_args: ["--model-flag", "7"]
        pi:
          model:
            reasoning: true
            input: [text]
        """)
    gcfg = load_global(global_file)
    _, data = load_model_file(model_file)
    merged = merge_model(gcfg, data)

    assert merged["server"]["port"] == 20000  # global over default
    assert merged["server"]["host"] == "127.0.0.1"  # default kept beside a global override
    assert merged["llama"]["ctx_size"] == 8192  # model over global
    assert merged["llama"]["parallel"] == 2  # global kept where the model is silent
    assert merged["llama"]["gpu_layers"] == 999  # default kept
    assert merged["llama"]["extra_args"] == ["--model-flag", "7"]  # lists replace
    assert merged["pi"]["model"] == {  # nested mappings merge key by key
        "reasoning": True, "input": ["text"], "contextWindow": 131072, "maxTokens": 100,
    }
    assert merged["id"] == "my-model"
    assert merged["name"] == "my-model"  # name defaults to the id
    assert merged["model_file"] == "m.gguf"
    # merging never mutates the inputs
    assert DEFAULTS == before
    assert gcfg.data["llama"]["ctx_size"] == 4096
    assert gcfg.data["llama"]["extra_args"] == ["--global-flag"]


def test_model_name_and_description_are_kept(write_text: Write, tmp_path: Path) -> None:
    _, data = load_model_file(write_text("gguf/m/config.yaml", """\
        id: m
        name: My Model
        description: a test model
        model_file: m.gguf
        """))
    merged = merge_model(load_global(tmp_path / "absent.yaml"), data)
    assert merged["name"] == "My Model"
    assert merged["description"] == "a test model"


def test_same_key_in_different_mappings_is_not_a_duplicate(write_text: Write) -> None:
    cfg = load_global(write_text("config/default.yaml", """\
        server:
          port: 20000
        daemon:
          port: 20001
        """))
    assert (cfg.data["server"]["port"], cfg.data["daemon"]["port"]) == (20000, 20001)


# --- errors: file:LINE: key: message --------------------------------------------------------


def test_unknown_key_suggests_the_closest(write_text: Write) -> None:
    path, err = global_error(write_text, """\
        server:
          port: 1234
        llama:
          flash_atn: on
        """)
    assert str(err) == f"{path}:4: llama.flash_atn: unknown key (did you mean 'flash_attn'?)"
    assert (err.file, err.line, err.key) == (str(path), 4, "llama.flash_atn")


def test_unknown_top_level_key_suggests_the_section(write_text: Write) -> None:
    path, err = global_error(write_text, "servr:\n  port: 1\n")
    assert str(err) == f"{path}:1: servr: unknown key (did you mean 'server'?)"


def test_string_for_int(write_text: Write) -> None:
    path, err = global_error(write_text, """\
        # comment
        server:
          port: "8080"
        """)
    assert str(err) == f"{path}:3: server.port: expected an integer, got '8080'"


def test_int_for_bool(write_text: Write) -> None:
    path, err = global_error(write_text, "llama:\n  mmap: 1\n")
    assert str(err) == f"{path}:2: llama.mmap: expected true or false, got 1"


def test_bool_for_int(write_text: Write) -> None:
    path, err = global_error(write_text, "llama:\n  ctx_size: true\n")
    assert str(err) == f"{path}:2: llama.ctx_size: expected an integer, got True"


def test_scalar_where_a_section_belongs(write_text: Write) -> None:
    path, err = global_error(write_text, "llama: 5\n")
    assert str(err) == f"{path}:1: llama: expected a mapping, got 5"


def test_duplicate_key_in_one_mapping(write_text: Write) -> None:
    path, err = global_error(write_text, """\
        llama:
          ctx_size: 1
          ctx_size: 2
        """)
    assert str(err) == f"{path}:3: llama.ctx_size: key appears twice in the same mapping"


def test_invalid_yaml_names_the_line(write_text: Write) -> None:
    path, err = global_error(write_text, """\
        server:
          port: 1
         bad: indent
        """)
    assert str(err).startswith(f"{path}:3: invalid YAML: ")
    assert err.line == 3


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_top_level_must_be_a_mapping(write_text: Write, text: str) -> None:
    path, err = global_error(write_text, text)
    assert str(err) == f"{path}:1: expected a mapping of keys to values at the top level"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])
def test_server_host_must_be_loopback(write_text: Write, host: str) -> None:
    path, err = global_error(write_text, f"server:\n  port: 1234\n  host: {host}\n")
    assert str(err).startswith(f"{path}:3: server.host: llama-server must listen on a loopback")
    assert repr(host) in str(err)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_server_host_loopback_accepted(write_text: Write, host: str) -> None:
    cfg = load_global(write_text("config/default.yaml", f"server:\n  host: '{host}'\n"))
    assert cfg.data["server"]["host"] == host


def test_remote_daemon_host_needs_allow_remote(write_text: Write) -> None:
    path, err = global_error(write_text, """\
        daemon:
          port: 16000
          host: 0.0.0.0
        """)
    assert str(err).startswith(f"{path}:3: daemon.host: '0.0.0.0' is not a loopback address")
    assert "daemon.allow_remote: true" in str(err)


def test_remote_daemon_host_with_allow_remote(write_text: Write) -> None:
    cfg = load_global(write_text("config/default.yaml", """\
        daemon:
          host: 0.0.0.0
          allow_remote: true
        """))
    assert cfg.data["daemon"]["host"] == "0.0.0.0"
    assert cfg.data["daemon"]["allow_remote"] is True


@pytest.mark.parametrize("value, expected", [("on", True), ("off", False), ("auto", "auto"),
                                             ('"on"', "on")])
def test_flash_attn_yaml_bool_accepted(write_text: Write, value: str, expected: object) -> None:
    cfg = load_global(write_text("config/default.yaml", f"llama:\n  flash_attn: {value}\n"))
    assert cfg.data["llama"]["flash_attn"] == expected


def test_flash_attn_rejects_other_values(write_text: Write) -> None:
    path, err = global_error(write_text, "llama:\n  flash_attn: maybe\n")
    assert str(err) == f"{path}:2: llama.flash_attn: expected on, off or auto, got 'maybe'"


def test_bad_default_model_id(write_text: Write) -> None:
    path, err = global_error(write_text, "daemon:\n  default_model: ../evil\n")
    assert str(err) == f"{path}:2: daemon.default_model: '../evil' is not a model id"


# --- model files ------------------------------------------------------------------------------


def test_valid_model_file(write_text: Write) -> None:
    doc, data = load_model_file(write_text("gguf/m/config.yaml", """\
        id: qwen3.5-35b-a3b-q8_0
        model_file: model.gguf
        llama:
          flash_attn: off
        """))
    assert data["id"] == "qwen3.5-35b-a3b-q8_0"
    assert data["llama"]["flash_attn"] is False
    assert doc.line_of("llama.flash_attn") == 4


@pytest.mark.parametrize("text, missing", [
    ("name: x\nmodel_file: m.gguf\n", "id"),
    ("id: m\nname: x\n", "model_file"),
])
def test_model_missing_required_key(write_text: Write, text: str, missing: str) -> None:
    """SPEC §2: a config error names the file, the line and the key. A missing key has no line
    of its own; the mapping it belongs in (the top level, line 1) is where to add it."""
    path, err = model_error(write_text, text)
    assert f"'{missing}'" in str(err) and "missing" in str(err)
    assert err.key == missing
    assert err.line == 1
    assert str(err).startswith(f"{path}:1: {missing}: ")


@pytest.mark.parametrize("bad_id, line", [("../x", 1), ("a/b", 1), (".hidden", 1), ("a b", 1)])
def test_model_invalid_id(write_text: Write, bad_id: str, line: int) -> None:
    path, err = model_error(write_text, f"id: '{bad_id}'\nmodel_file: m.gguf\n")
    assert str(err).startswith(f"{path}:{line}: id: {bad_id!r} is not a valid id")


def test_model_id_must_be_a_string(write_text: Write) -> None:
    path, err = model_error(write_text, "model_file: m.gguf\nid: 5\n")
    assert str(err) == f"{path}:2: id: expected a non-empty string, got 5"


def test_model_config_cannot_set_server_keys(write_text: Write) -> None:
    path, err = model_error(write_text, """\
        id: m
        model_file: m.gguf
        server:
          port: 1
        """)
    assert str(err).startswith(f"{path}:3: server: unknown key")


def test_model_config_type_error_names_nested_key(write_text: Write) -> None:
    path, err = model_error(write_text, """\
        id: m
        model_file: m.gguf
        pi:
          model:
            contextWindow: lots
        """)
    assert str(err) == f"{path}:5: pi.model.contextWindow: expected an integer, got 'lots'"
