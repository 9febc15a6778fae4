"""llmctl.core.aliases and alias resolution: a name means one model, or it is a config error."""

from __future__ import annotations

from pathlib import Path

from llmctl.core.aliases import name_index
from llmctl.core.config import load_global
from llmctl.core.discovery import discover
from llmctl.core.resolve import resolve


def add(models_dir: Path, model_id: str, extra: str = "") -> None:
    d = models_dir / model_id
    d.mkdir(parents=True)
    (d / "m.gguf").write_bytes(b"GGUF")
    (d / "config.yaml").write_text(f"id: {model_id}\nmodel_file: m.gguf\n{extra}")


def catalog(tmp_path: Path):  # type: ignore[no-untyped-def]
    return discover(tmp_path / "gguf", load_global(tmp_path / "absent.yaml"))


def test_index_maps_ids_and_aliases(tmp_path: Path) -> None:
    add(tmp_path / "gguf", "alpha", "aliases: [gpt-4o-mini, coder]\n")
    add(tmp_path / "gguf", "beta")
    assert name_index(catalog(tmp_path)) == {"alpha": "alpha", "gpt-4o-mini": "alpha",
                                             "coder": "alpha", "beta": "beta"}


def test_an_alias_that_is_another_models_id_is_an_error_of_the_model_listing_it(
        tmp_path: Path) -> None:
    add(tmp_path / "gguf", "alpha", "name: A\naliases: [beta]\n")
    add(tmp_path / "gguf", "beta")
    entries = {e.key: e for e in catalog(tmp_path).entries}
    assert entries["beta"].available
    error = entries["alpha"].error or ""
    assert error.startswith(f"{tmp_path / 'gguf' / 'alpha' / 'config.yaml'}:4: aliases: ")
    assert "'beta' is already the id of beta" in error
    assert name_index(catalog(tmp_path)) == {"alpha": "alpha", "beta": "beta"}


def test_the_second_model_claiming_an_alias_is_the_broken_one(tmp_path: Path) -> None:
    add(tmp_path / "gguf", "alpha", "aliases: [coder]\n")
    add(tmp_path / "gguf", "beta", "aliases: [fast, coder]\n")
    entries = {e.key: e for e in catalog(tmp_path).entries}
    assert entries["alpha"].available
    assert "'coder' is already an alias of alpha" in (entries["beta"].error or "")


def test_switch_resolution_accepts_aliases() -> None:
    models = {"qwen3-coder-30b": "Qwen3 Coder", "gemma-3-12b": "Gemma 3"}
    aliases = {"coder": "qwen3-coder-30b", "gpt-4o-mini": "gemma-3-12b"}
    assert resolve("gpt-4o-mini", models, aliases).model == "gemma-3-12b"
    assert resolve("GPT-4o-Mini", models, aliases).model == "gemma-3-12b"
    assert resolve("coder", models, aliases).model == "qwen3-coder-30b"
    # without aliases the same text is only a loose match, or none
    assert resolve("gpt-4o-mini", models).kind == "not_found"


def test_an_exact_alias_beats_a_substring_of_another_id() -> None:
    models = {"coder-small": "Coder Small", "big-model": "Big"}
    assert resolve("coder", models, {"coder": "big-model"}).model == "big-model"
