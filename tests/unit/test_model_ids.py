"""llmctl.core.model_ids: ids and names derived from GGUF file names."""

from __future__ import annotations

import pytest

from llmctl.core.config import MODEL_ID_RE
from llmctl.core.model_ids import (
    display_name,
    file_id,
    is_projector,
    repo_file_id,
    shard_name,
    shard_of,
    with_suffix,
)


@pytest.mark.parametrize("filename, expected", [
    ("Qwen3-8B-Q4_K_M.gguf", "qwen3-8b-q4_k_m"),
    ("qwen3-8b-q4_k_m.GGUF", "qwen3-8b-q4_k_m"),
    ("Llama 3.1 8B Instruct (Q8_0).gguf", "llama-3.1-8b-instruct-q8_0"),
    ("Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf", "qwen3-235b-a22b-q4_k_m"),
    ("Qwen3-235B-A22B-Q4_K_M-00003-of-00003.gguf", "qwen3-235b-a22b-q4_k_m"),
    ("model.Q4_K_M.gguf", "model.q4_k_m"),
    ("__weird name__.gguf", "weird-name"),  # ids start with a letter or digit
    ("ünïcode-model.gguf", "n-code-model"),
    ("---.gguf", "model"),  # never empty
    ("gemma-3-270m+it.gguf", "gemma-3-270m+it"),
])
def test_file_id(filename: str, expected: str) -> None:
    assert file_id(filename) == expected
    assert MODEL_ID_RE.match(file_id(filename))


def test_file_id_is_bounded_and_valid() -> None:
    long_id = file_id("x" * 300 + ".gguf")
    assert len(long_id) == 128 and MODEL_ID_RE.match(long_id)
    assert len(with_suffix(long_id, 12)) == 128
    assert with_suffix(long_id, 12).endswith("-12")
    assert with_suffix("qwen3-8b", 2) == "qwen3-8b-2"


@pytest.mark.parametrize("repo, filename, expected", [
    ("unsloth/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf", "qwen3-8b-q4_k_m"),
    ("TheBloke/Mistral-7B-Instruct-v0.2-GGUF", "mistral-7b-instruct-v0.2.Q4_K_M.gguf",
     "mistral-7b-instruct-v0.2.q4_k_m"),
    ("TheBloke/Mistral-7B-GGUF", "model.Q4_K_M.gguf", "mistral-7b-model.q4_k_m"),
    ("org/tiny_gguf", "ggml-model-f16.gguf", "tiny-ggml-model-f16"),
    ("org/Big-GGUF", "Big-Q8_0-00001-of-00002.gguf", "big-q8_0"),
])
def test_repo_file_id(repo: str, filename: str, expected: str) -> None:
    assert repo_file_id(repo, filename) == expected


def test_shards() -> None:
    assert shard_of("Big-Q8_0-00002-of-00005.gguf") == ("Big-Q8_0", 2, 5)
    assert shard_of("Big-Q8_0.gguf") is None
    assert shard_of("x-1-of-2.gguf") is None  # llama.cpp always writes five digits
    assert shard_name("Big-Q8_0", 1, 5) == "Big-Q8_0-00001-of-00005.gguf"


def test_projectors() -> None:
    assert is_projector("mmproj-model-f16.gguf")
    assert is_projector("MMPROJ-F16.gguf")
    assert not is_projector("gemma-3-4b-it-Q4_K_M.gguf")


def test_display_name() -> None:
    assert display_name("Qwen3 8B", "Q4_K_M", "Qwen3-8B-Q4_K_M.gguf") == "Qwen3 8B Q4_K_M"
    assert display_name("Qwen3 8B Q4_K_M", "Q4_K_M", "x.gguf") == "Qwen3 8B Q4_K_M"
    assert display_name(None, None, "Big-Q8_0-00001-of-00002.gguf") == "Big-Q8_0"
    assert display_name("  ", "F32", "tiny.gguf") == "tiny F32"
