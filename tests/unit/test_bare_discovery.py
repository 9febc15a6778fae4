"""Discovery without config (core/scan.py, core/discovery.py): bare GGUFs, shards, projectors,
the Hugging Face cache layout, model_dirs, collisions, broken files and the header cache. The
files are real GGUF headers (tests/support/ggufkit.py); llama-server runs in the integration
tests (test_models_in.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmctl.core import scan
from llmctl.core.catalog import Catalog
from llmctl.core.config import GlobalConfig, load_global
from llmctl.core.discovery import discover

from ggufkit import write_header


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home" / "gguf").mkdir(parents=True)
    return tmp_path / "home"


def config(home: Path, **daemon: object) -> GlobalConfig:
    (home / "config").mkdir(exist_ok=True)
    (home / "config" / "default.yaml").write_text(yaml.safe_dump({"daemon": daemon}))
    return load_global(home / "config" / "default.yaml")


def run(home: Path, cfg: GlobalConfig | None = None) -> Catalog:
    return discover(home / "gguf", cfg or config(home), home / "run" / "cache.json")


def test_a_bare_gguf_is_a_model(home: Path) -> None:
    path = write_header(home / "gguf" / "Qwen3-8B-Q4_K_M.gguf", name="Qwen3 8B", ctx=40960)
    catalog = run(home)
    (entry,) = catalog.entries
    assert entry.id == "qwen3-8b-q4_k_m" and entry.available, entry.error
    assert entry.name == "Qwen3 8B Q4_K_M"
    assert entry.source == "file" and entry.config_file is None
    assert entry.model_path == path
    assert entry.config is not None
    assert entry.config["pi"]["model"]["contextWindow"] == 40960  # the trained context
    assert entry.config["pi"]["model"]["input"] == ["text"]
    summary = entry.summary()
    assert summary["source"] == "file" and summary["gguf"]["context_length"] == 40960
    assert summary["config_file"] is None


def test_context_window_is_clamped_to_ctx_size(home: Path) -> None:
    write_header(home / "gguf" / "big.gguf", ctx=131072)
    (home / "config").mkdir()
    (home / "config" / "default.yaml").write_text("llama:\n  ctx_size: 8192\n")
    (entry,) = run(home, load_global(home / "config" / "default.yaml")).entries
    assert entry.config is not None
    assert entry.config["pi"]["model"]["contextWindow"] == 8192
    assert entry.config["pi"]["model"]["maxTokens"] == 8192


def test_config_yaml_beside_a_bare_file_overrides_it(home: Path) -> None:
    d = home / "gguf" / "mine"
    write_header(d / "Some-Model-Q8_0.gguf", ctx=32768)
    (d / "config.yaml").write_text("name: Mine\nllama:\n  ctx_size: 4096\n"
                                   "pi:\n  model:\n    maxTokens: 1000\n")
    (entry,) = run(home).entries
    assert entry.source == "config" and entry.available, entry.error
    assert entry.id == "some-model-q8_0"  # no id in the file: derived from the model file
    assert entry.name == "Mine"
    assert entry.config is not None
    assert entry.config["llama"]["ctx_size"] == 4096
    assert entry.config["pi"]["model"]["contextWindow"] == 4096  # clamped by its own ctx_size
    assert entry.config["pi"]["model"]["maxTokens"] == 1000  # its own setting wins


def test_config_without_model_file_needs_exactly_one_model(home: Path) -> None:
    d = home / "gguf" / "two"
    write_header(d / "a.gguf")
    write_header(d / "b.gguf")
    (d / "config.yaml").write_text("id: two\n")
    catalog = run(home)
    (bad,) = catalog.entries  # the directory is the config's, even while it is broken
    assert bad.source == "config" and not bad.available
    assert bad.error == (f"{d / 'config.yaml'}:1: model_file: missing required key "
                         "'model_file' (at the top level): 2 models here (a.gguf, b.gguf)")


def test_shards_are_one_model(home: Path) -> None:
    d = home / "gguf" / "big"
    for n in (1, 2, 3):
        write_header(d / f"Big-Q8_0-0000{n}-of-00003.gguf", name="Big", split=(n, 3), pad=n)
    (entry,) = run(home).entries
    assert entry.id == "big-q8_0" and entry.available, entry.error
    assert entry.model_path == d / "Big-Q8_0-00001-of-00003.gguf"
    assert [p.name[-20:] for p in entry.shards] == [
        "-00001-of-00003.gguf", "-00002-of-00003.gguf", "-00003-of-00003.gguf"]
    summary = entry.summary()
    assert summary["shards"] == 3
    assert summary["size_bytes"] == sum(p.stat().st_size for p in entry.shards)


def test_a_missing_shard_makes_the_model_unavailable(home: Path) -> None:
    d = home / "gguf"
    write_header(d / "Big-00001-of-00003.gguf", split=(1, 3))
    write_header(d / "Big-00003-of-00003.gguf", split=(3, 3))
    write_header(d / "fine.gguf")
    catalog = run(home)
    big = catalog.by_id("big")
    assert big is not None and not big.available
    assert big.error is not None and "missing shard(s) Big-00002-of-00003.gguf" in big.error
    assert catalog.by_id("fine") is not None and catalog.by_id("fine").available


def test_projector_beside_a_model(home: Path) -> None:
    d = home / "gguf" / "vision"
    write_header(d / "gemma-3-4b-it-Q4_K_M.gguf", arch="gemma3", ctx=131072)
    projector = write_header(d / "mmproj-model-f16.gguf", arch="clip", ctx=None)
    (entry,) = run(home).entries  # the projector is no model of its own
    assert entry.mmproj_path == projector
    assert entry.config is not None
    assert entry.config["mmproj_file"] == str(projector)
    assert entry.config["pi"]["model"]["input"] == ["text", "image"]
    assert entry.summary()["mmproj"] == str(projector)


def test_a_clip_file_not_named_mmproj_is_reported(home: Path) -> None:
    write_header(home / "gguf" / "vision-projector.gguf", arch="clip")
    (entry,) = run(home).entries
    assert not entry.available
    assert entry.error is not None and "multimodal projector" in entry.error
    assert "mmproj-" in entry.error


def test_broken_files_are_listed_and_hide_nothing(home: Path, tmp_path: Path) -> None:
    d = home / "gguf"
    (d / "truncated.gguf").write_bytes(b"GGUF\x03\x00")
    (d / "text.gguf").write_text("not a model, only some words of text")
    (d / "dangling.gguf").symlink_to(tmp_path / "gone.gguf")
    write_header(d / "good.gguf")
    catalog = run(home)
    assert catalog.by_id("good") is not None and catalog.by_id("good").available
    errors = {e.id: e.error for e in catalog.entries if not e.available}
    assert set(errors) == {"truncated", "text", "dangling"}
    assert errors["text"] == f"{d / 'text.gguf'}: not a GGUF file (bad magic)"
    assert errors["truncated"] == f"{d / 'truncated.gguf'}: file too small to be GGUF"
    assert errors["dangling"] == f"{d / 'dangling.gguf'}: is a dangling symlink"


def test_hf_cache_layout(home: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--unsloth--Qwen3-8B-GGUF"
    blob = write_header(repo / "blobs" / "0123abcd", name="Qwen3 8B", ctx=40960)
    old = write_header(repo / "blobs" / "4567ef", name="Qwen3 8B old", ctx=40960)
    for rev, target in (("aaaa", old), ("bbbb", blob)):
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        (snap / "Qwen3-8B-Q4_K_M.gguf").symlink_to(Path("../../blobs") / target.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("bbbb")
    other = hub / "models--TheBloke--Mistral-7B-GGUF" / "snapshots" / "cccc"
    write_header(other / "model.Q4_K_M.gguf", name="Mistral 7B")
    (hub / "models--TheBloke--Mistral-7B-GGUF" / "blobs").mkdir()

    catalog = run(home, config(home, model_dirs=[str(hub)]))

    by_id = {e.id: e for e in catalog.entries}
    assert set(by_id) == {"qwen3-8b-q4_k_m", "mistral-7b-model.q4_k_m"}, catalog.problems
    qwen = by_id["qwen3-8b-q4_k_m"]
    assert qwen.source == "model_dir" and qwen.root == hub
    assert qwen.model_path == repo / "snapshots" / "bbbb" / "Qwen3-8B-Q4_K_M.gguf"  # refs/main
    assert qwen.name == "Qwen3 8B Q4_K_M"
    assert by_id["mistral-7b-model.q4_k_m"].available


def test_model_dirs_problems_are_reported(home: Path, tmp_path: Path) -> None:
    write_header(home / "gguf" / "ok.gguf")
    catalog = run(home, config(home, model_dirs=[str(tmp_path / "absent"), "relative/dir"]))
    assert catalog.ids == ["ok"]
    assert catalog.problems == [
        f"daemon.model_dirs: {tmp_path / 'absent'} is not a directory",
        "daemon.model_dirs: 'relative/dir' must be an absolute path (or start with ~)"]


def test_collisions_are_deterministic_and_explained(home: Path, tmp_path: Path) -> None:
    own = write_header(home / "gguf" / "a" / "Model-Q4_K_M.gguf")
    again = write_header(home / "gguf" / "b" / "Model-Q4_K_M.gguf")
    lms = tmp_path / "lmstudio"
    elsewhere = write_header(lms / "pub" / "repo" / "Model-Q4_K_M.gguf")
    cfg_dir = home / "gguf" / "c"
    write_header(cfg_dir / "weights.gguf")
    (cfg_dir / "config.yaml").write_text("id: model-q4_k_m\nmodel_file: weights.gguf\n")
    cfg = config(home, model_dirs=[str(lms)])

    first = run(home, cfg)
    second = run(home, cfg)

    ids = {str(e.model_path): e.id for e in first.entries}
    assert ids == {str(cfg_dir / "weights.gguf"): "model-q4_k_m",  # an explicit id wins
                   str(own): "model-q4_k_m-2", str(again): "model-q4_k_m-3",
                   str(elsewhere): "model-q4_k_m-4"}
    assert ids == {str(e.model_path): e.id for e in second.entries}  # the same every time
    note = first.by_id("model-q4_k_m-4").note
    assert note is not None
    assert note.startswith(f"id model-q4_k_m is taken by {cfg_dir / 'weights.gguf'} (config), "
                           "so this file got model-q4_k_m-4")


def test_a_file_reached_twice_is_one_model(home: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    real = write_header(store / "shared-Q4_0.gguf")
    d = home / "gguf" / "shared"
    d.mkdir()
    (d / "model.gguf").symlink_to(real)
    (d / "config.yaml").write_text("id: shared\nmodel_file: model.gguf\n")
    catalog = run(home, config(home, model_dirs=[str(store)]))
    assert catalog.ids == ["shared"]  # the model_dirs copy is the same file: not listed again


def test_symlink_loops_are_walked_once(home: Path) -> None:
    d = home / "gguf" / "loop"
    write_header(d / "x.gguf")
    (d / "again").symlink_to(d)
    assert run(home).ids == ["x"]


def test_header_cache_skips_unchanged_files(home: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    path = write_header(home / "gguf" / "m.gguf", name="First")
    cache_file = home / "run" / "cache.json"
    assert run(home).entries[0].name == "First Q4_K_M"
    assert str(path) in json.loads(cache_file.read_text())["entries"]

    reads: list[Path] = []
    real = scan.read_facts
    monkeypatch.setattr(scan, "read_facts", lambda p: reads.append(p) or real(p))
    scan._CACHES.clear()  # a new process: only the file remains
    assert run(home).entries[0].name == "First Q4_K_M"
    assert reads == []  # answered from the cache file

    write_header(path, name="Second", pad=10)  # size and mtime change: read again
    assert run(home).entries[0].name == "Second Q4_K_M"
    assert reads == [path]
