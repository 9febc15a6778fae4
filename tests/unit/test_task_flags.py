"""llama.embeddings / llama.reranking / llama.pooling onto llama-server flags, for the build
in front of us (help texts saved from a real build and an old one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmctl.core.config import ConfigError, load_global, merge_model
from llmctl.daemon.backend.llama_server import (
    BackendSetupError,
    Capabilities,
    build_argv,
    parse_help,
)

SUPPORT = Path(__file__).resolve().parents[1] / "support"
BINARY = Path("/opt/llama/bin/llama-server")
MODEL = Path("/models/m/model.gguf")


@pytest.fixture(scope="module")
def new_caps() -> Capabilities:
    return parse_help((SUPPORT / "llama_server_help_b11434.txt").read_text())


@pytest.fixture(scope="module")
def old_caps() -> Capabilities:
    return parse_help((SUPPORT / "llama_server_help_old.txt").read_text())


def config(tmp_path: Path, **llama: Any) -> dict[str, Any]:
    return merge_model(load_global(tmp_path / "absent.yaml"),
                       {"id": "m", "model_file": "model.gguf", "llama": llama})


def test_defaults_add_no_task_flags(tmp_path: Path, new_caps: Capabilities) -> None:
    argv = build_argv(BINARY, new_caps, config(tmp_path), MODEL)
    assert not {"--embeddings", "--embedding", "--reranking", "--rerank", "--pooling"} & set(argv)


def test_embedding_model(tmp_path: Path, new_caps: Capabilities) -> None:
    argv = build_argv(BINARY, new_caps, config(tmp_path, embeddings=True, pooling="mean",
                                               extra_args=["--verbose"]), MODEL)
    assert "--embeddings" in argv
    assert argv[argv.index("--pooling") + 1] == "mean"
    assert argv[-1] == "--verbose"  # extra_args still last


def test_reranking_model(tmp_path: Path, new_caps: Capabilities) -> None:
    argv = build_argv(BINARY, new_caps, config(tmp_path, reranking=True, pooling="rank"), MODEL)
    assert "--reranking" in argv and argv[argv.index("--pooling") + 1] == "rank"


def test_old_build_embeds_but_cannot_rerank(tmp_path: Path, old_caps: Capabilities) -> None:
    argv = build_argv(BINARY, old_caps, config(tmp_path, embeddings=True), MODEL)
    assert "--embeddings" in argv or "--embedding" in argv
    with pytest.raises(BackendSetupError, match=r"llama.reranking is true .* no --reranking"):
        build_argv(BINARY, old_caps, config(tmp_path, reranking=True), MODEL)
    with pytest.raises(BackendSetupError, match=r"llama.pooling .* no --pooling"):
        build_argv(BINARY, old_caps, config(tmp_path, pooling="mean"), MODEL)


def test_bad_pooling_is_a_config_error(tmp_path: Path) -> None:
    file = tmp_path / "default.yaml"
    file.write_text("llama:\n  embeddings: yes\n  pooling: average\n")
    with pytest.raises(ConfigError, match=r"default.yaml:3: llama.pooling: expected one of none"):
        load_global(file)


def test_backend_writes_are_off_by_default(tmp_path: Path) -> None:
    assert load_global(tmp_path / "absent.yaml").data["daemon"]["allow_backend_writes"] is False
