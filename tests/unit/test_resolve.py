"""llmctl.core.resolve: what a person typed -> one model id, or why not."""

from __future__ import annotations

import pytest

from llmctl.core.resolve import resolve

MODELS = {
    "qwen3.5-35b-a3b-q8_0": "Qwen3.5 35B A3B",
    "qwen3-8b-q4_k_m": "Qwen3 8B",
    "gemma-3-12b-it": "Gemma 3 12B Instruct",
    "llama-3.1-8b-instruct": "Llama 3.1 8B Instruct",
}


def test_exact_id() -> None:
    r = resolve("qwen3-8b-q4_k_m", MODELS)
    assert (r.kind, r.model, r.candidates) == ("match", "qwen3-8b-q4_k_m", [])


def test_exact_id_wins_over_a_longer_id_containing_it() -> None:
    models = {"tiny": "Tiny", "tiny-2": "Tiny 2"}
    assert resolve("tiny", models).model == "tiny"
    assert resolve("  tiny  ", models).model == "tiny"


@pytest.mark.parametrize("query, expected", [
    ("QWEN3-8B-Q4_K_M", "qwen3-8b-q4_k_m"),
    ("gemma 3 12b instruct", "gemma-3-12b-it"),
    ("LLAMA 3.1 8B INSTRUCT", "llama-3.1-8b-instruct"),
])
def test_case_insensitive_id_or_name(query: str, expected: str) -> None:
    r = resolve(query, MODELS)
    assert (r.kind, r.model) == ("match", expected)


@pytest.mark.parametrize("query, expected", [
    ("gemma", "gemma-3-12b-it"),
    ("35b", "qwen3.5-35b-a3b-q8_0"),
    ("LLAMA", "llama-3.1-8b-instruct"),
])
def test_unique_substring(query: str, expected: str) -> None:
    r = resolve(query, MODELS)
    assert (r.kind, r.model) == ("match", expected)


def test_ambiguous_substring_lists_candidates() -> None:
    r = resolve("qwen3", MODELS)
    assert r.kind == "ambiguous"
    assert r.model is None
    assert r.candidates == ["qwen3-8b-q4_k_m", "qwen3.5-35b-a3b-q8_0"]


def test_ambiguous_across_ids_and_names() -> None:
    r = resolve("8b", MODELS)
    assert r.kind == "ambiguous"
    assert r.candidates == ["llama-3.1-8b-instruct", "qwen3-8b-q4_k_m"]


@pytest.mark.parametrize("query", ["qwen35", "Qwen3.5_35B", "qwen 3.5 35b a3b"])
def test_punctuation_insensitive(query: str) -> None:
    r = resolve(query, MODELS)
    assert (r.kind, r.model) == ("match", "qwen3.5-35b-a3b-q8_0")


@pytest.mark.parametrize("query, expected", [
    ("gemmma-3-12b-it", "gemma-3-12b-it"),
    ("lama-3.1-8b-instrcut", "llama-3.1-8b-instruct"),
    ("qwen3.5-35b-a3b-q8_1", "qwen3.5-35b-a3b-q8_0"),
])
def test_fuzzy_typo(query: str, expected: str) -> None:
    r = resolve(query, MODELS)
    assert (r.kind, r.model) == ("match", expected)


def test_not_found_with_suggestions() -> None:
    r = resolve("qwen-8b", MODELS)
    assert r.kind == "not_found"
    assert r.model is None
    assert r.candidates[0] == "qwen3-8b-q4_k_m"
    assert set(r.candidates) <= set(MODELS)
    assert len(r.candidates) <= 3


def test_not_found_without_anything_close() -> None:
    r = resolve("zzzz", MODELS)
    assert (r.kind, r.model, r.candidates) == ("not_found", None, [])


def test_empty_catalog() -> None:
    r = resolve("anything", {})
    assert (r.kind, r.candidates) == ("not_found", [])
