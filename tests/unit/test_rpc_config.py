"""RPC workers in the configuration: `workers:` (names -> host:port), a model's
`llama.workers` (names or `all`), the check interval, the --rpc flag llama_server.build_argv
adds, and the errors that name the file, the line and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmctl.core.config import ConfigError, load_global, merge_model, model_workers
from llmctl.core.discovery import discover
from llmctl.daemon.backend.llama_server import (
    BackendSetupError,
    build_argv,
    parse_help,
    rpc_addresses,
)

SUPPORT = Path(__file__).resolve().parents[1] / "support"
NEW_HELP = (SUPPORT / "llama_server_help_b11434.txt").read_text()
OLD_HELP = (SUPPORT / "llama_server_help_old.txt").read_text()
WORKERS = "workers:\n  gpu-a: 10.0.0.2:50052\n  gpu-b: box.lan:50053\n"


def write_global(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config" / "default.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def merged(tmp_path: Path, workers: Any, global_text: str = WORKERS) -> dict[str, Any]:
    cfg = load_global(write_global(tmp_path, global_text))
    return merge_model(cfg, {"id": "big", "model_file": "m.gguf", "llama": {"workers": workers}})


def test_llama_workers_names_become_rpc_addresses_in_their_order(tmp_path: Path) -> None:
    cfg = merged(tmp_path, ["gpu-b", "gpu-a"])
    argv = build_argv(Path("/bin/llama-server"), parse_help(NEW_HELP), cfg, Path("/m.gguf"))
    assert argv[argv.index("--rpc") + 1] == "box.lan:50053,10.0.0.2:50052"
    assert rpc_addresses(argv) == ["box.lan:50053", "10.0.0.2:50052"]
    # extra_args come after, so a user's --tensor-split can follow
    cfg["llama"]["extra_args"] = ["--tensor-split", "1,1"]
    argv = build_argv(Path("/bin/llama-server"), parse_help(NEW_HELP), cfg, Path("/m.gguf"))
    assert argv.index("--rpc") < argv.index("--tensor-split")


def test_all_means_every_worker_and_none_means_no_flag(tmp_path: Path) -> None:
    assert model_workers(merged(tmp_path, "all")) == [("gpu-a", "10.0.0.2:50052"),
                                                      ("gpu-b", "box.lan:50053")]
    argv = build_argv(Path("/bin/llama-server"), parse_help(NEW_HELP), merged(tmp_path, []),
                      Path("/m.gguf"))
    assert "--rpc" not in argv and rpc_addresses(argv) == []


def test_a_llama_server_without_rpc_support_is_a_clear_setup_error(tmp_path: Path) -> None:
    with pytest.raises(BackendSetupError) as e:
        build_argv(Path("/bin/llama-server"), parse_help(OLD_HELP), merged(tmp_path, "all"),
                   Path("/m.gguf"))
    message = str(e.value)
    assert "no --rpc" in message and "GGML_RPC=ON" in message
    assert "CMAKE_ARGS=-DGGML_RPC=ON pip install --no-cache-dir" in message


@pytest.mark.parametrize("text, problem", [
    ("workers:\n  a: '[::1]:50052'\n", "not IPv6"),
    ("workers:\n  a: 10.0.0.2\n", "expected host:port"),
    ("workers:\n  a: 10.0.0.2:70000\n", "is not a port number"),
    ("workers:\n  all: 10.0.0.2:1\n", "not `all`"),
    ("workers:\n  a: h:1\n  b: h:1\n", "b and a are the same worker"),
    ("workers:\n  a: 'bad host:1'\n", "not an IPv4 address or host name"),
    ("workers: [a]\n", "expected a mapping of worker names"),
    ("daemon:\n  rpc_check_interval: 50ms\n", "must be between 0.2s and 3600s"),
    (WORKERS + "llama:\n  workers: [gpu-c]\n", "names no worker 'gpu-c'"),
])
def test_bad_global_settings_name_the_key_and_line(tmp_path: Path, text: str,
                                                   problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_global(write_global(tmp_path, text))
    assert problem in str(e.value)
    assert e.value.line is not None and e.value.file.endswith("default.yaml")


def test_a_model_naming_an_unknown_worker_is_listed_unavailable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = load_global(write_global(home, WORKERS))
    for name, workers in (("good", "[gpu-a]"), ("typo", "[gpu-a, gpu-z]")):
        d = home / "gguf" / name
        d.mkdir(parents=True)
        (d / "m.gguf").write_bytes(b"GGUF")
        (d / "config.yaml").write_text(f"id: {name}\nmodel_file: m.gguf\n"
                                       f"llama:\n  workers: {workers}\n")
    catalog = discover(home / "gguf", cfg, None)
    typo = catalog.by_id("typo")
    assert typo is not None and typo.error is not None
    assert "typo/config.yaml:4: llama.workers: names no worker 'gpu-z'" in typo.error
    assert "(workers in config/default.yaml: gpu-a, gpu-b)" in typo.error
    good = catalog.by_id("good")
    assert good is not None and good.error is None
