"""backend/catalog_memo.py: the same catalog again while nothing it came from changed, and a
fresh one the moment anything did (an edit, a new file, a removed one, the global config)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmctl.core import discovery
from llmctl.core.config import GlobalConfig, load_global
from llmctl.daemon.backend import catalog_memo
from llmctl.daemon.backend.catalog_memo import discover_cached


@pytest.fixture(autouse=True)
def fresh_memo() -> None:
    catalog_memo.forget()
    discovery._PARSED.clear()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    d = tmp_path / "gguf"
    d.mkdir()
    return d


@pytest.fixture
def cfg(tmp_path: Path) -> GlobalConfig:
    return load_global(tmp_path / "default.yaml")


def add(models_dir: Path, model_id: str, aliases: str = "[]") -> Path:
    d = models_dir / model_id
    d.mkdir(exist_ok=True)
    (d / "model.gguf").write_bytes(b"GGUF fake weights")
    (d / "config.yaml").write_text(f"id: {model_id}\nmodel_file: model.gguf\n"
                                   f"aliases: {aliases}\n")
    return d


def age(root: Path, seconds: float = 60) -> None:
    """mtimes in the past (a ctime cannot be set: the racy window is turned off instead)."""
    for path in [root, *root.rglob("*")]:
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_an_unchanged_tree_gives_the_same_catalog(models_dir, cfg, monkeypatch) -> None:
    monkeypatch.setattr(catalog_memo, "RACY_SECONDS", 0.0)
    add(models_dir, "a")
    add(models_dir, "b")
    age(models_dir)
    first = discover_cached(models_dir, cfg)
    assert discover_cached(models_dir, cfg) is first
    assert [e.id for e in first.entries] == ["a", "b"]


def test_an_edit_shows_at_once_even_within_one_mtime_tick(models_dir, cfg) -> None:
    """Same size, same second: the racy window (files younger than 2 s are not trusted)
    is what makes this safe on file systems with coarse timestamps."""
    d = add(models_dir, "a", "[x1]")
    assert discover_cached(models_dir, cfg).by_id("a").config["aliases"] == ["x1"]
    (d / "config.yaml").write_text("id: a\nmodel_file: model.gguf\naliases: [x2]\n")
    assert discover_cached(models_dir, cfg).by_id("a").config["aliases"] == ["x2"]


@pytest.mark.parametrize("change", ["edit", "new_model", "removed", "model_file", "global"])
def test_every_kind_of_change_is_seen(models_dir, cfg, tmp_path, monkeypatch,
                                      change: str) -> None:
    monkeypatch.setattr(catalog_memo, "RACY_SECONDS", 0.0)
    a = add(models_dir, "a")
    add(models_dir, "b")
    age(models_dir)
    first = discover_cached(models_dir, cfg)
    assert discover_cached(models_dir, cfg) is first
    if change == "edit":
        (a / "config.yaml").write_text("id: a\nmodel_file: model.gguf\naliases: [edited]\n")
    elif change == "new_model":
        add(models_dir, "c")
    elif change == "removed":
        for f in (models_dir / "b").iterdir():
            f.unlink()
        (models_dir / "b").rmdir()
    elif change == "model_file":
        (a / "model.gguf").write_bytes(b"not a gguf file, and long enough to be read" * 4)
    else:
        (tmp_path / "default.yaml").write_text("llama:\n  ctx_size: 1234\n")
        cfg = load_global(tmp_path / "default.yaml")
    again = discover_cached(models_dir, cfg)
    assert again is not first
    expected = {"edit": lambda: again.by_id("a").config["aliases"] == ["edited"],
                "new_model": lambda: again.by_id("c") is not None,
                "removed": lambda: again.by_id("b") is None,
                "model_file": lambda: again.by_id("a").facts_error != first.by_id("a").facts_error,
                "global": lambda: again.by_id("a").config["llama"]["ctx_size"] == 1234}
    assert expected[change]()


def test_a_root_that_appears_later_is_seen(models_dir, cfg, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(catalog_memo, "RACY_SECONDS", 0.0)
    other = tmp_path / "lmstudio"
    (tmp_path / "default.yaml").write_text(f"daemon:\n  model_dirs: [{other}]\n")
    cfg = load_global(tmp_path / "default.yaml")
    first = discover_cached(models_dir, cfg)
    assert any("is not a directory" in p for p in first.problems)
    other.mkdir()
    (other / "Llama-Q4_K_M.gguf").write_bytes(b"GGUF fake")
    again = discover_cached(models_dir, cfg)
    assert not again.problems and len(again.entries) == 1


def test_discovery_is_linear_in_the_number_of_configured_models(models_dir, cfg) -> None:
    """Not timed: the walk's models are looked up by directory and path, never scanned once
    per config file (counted through FoundModel.directory, which the old code called
    n * n times)."""
    for i in range(60):
        add(models_dir, f"m{i:02d}")
    calls = 0
    original = discovery.FoundModel.directory

    def counting(self):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return original.fget(self)

    try:
        discovery.FoundModel.directory = property(counting)  # type: ignore[method-assign]
        catalog = discovery.discover(models_dir, cfg)
    finally:
        discovery.FoundModel.directory = original  # type: ignore[method-assign]
    assert len(catalog.entries) == 60
    assert calls <= 4 * 60, calls
