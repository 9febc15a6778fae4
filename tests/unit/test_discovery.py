"""llmctl.core.discovery: one model per gguf/<dir>/config.yaml; a broken one hides no other."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.core.catalog import Catalog
from llmctl.core.config import GlobalConfig, load_global
from llmctl.core.discovery import discover


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    d = tmp_path / "home" / "gguf"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def global_cfg(tmp_path: Path) -> GlobalConfig:
    return load_global(tmp_path / "home" / "config" / "default.yaml")


def add_model(models_dir: Path, directory: str, config: str, gguf: str | None = "model.gguf",
              ) -> Path:
    d = models_dir / directory
    d.mkdir()
    (d / "config.yaml").write_text(config)
    if gguf is not None:
        (d / gguf).write_bytes(b"GGUF fake weights")
    return d


def model_config(model_id: str, model_file: str = "model.gguf", extra: str = "") -> str:
    return f"id: {model_id}\nname: {model_id.title()}\nmodel_file: '{model_file}'\n{extra}"


def by_key(catalog: Catalog) -> dict[str, object]:
    return {e.key: e for e in catalog.entries}


def test_models_are_found(models_dir: Path, global_cfg: GlobalConfig) -> None:
    a = add_model(models_dir, "a", model_config("alpha", extra="llama:\n  ctx_size: 512\n"))
    add_model(models_dir, "b", model_config("beta"))
    (models_dir / "no-config").mkdir()  # an empty directory is no model

    catalog = discover(models_dir, global_cfg)

    assert catalog.ids == ["alpha", "beta"]
    alpha = catalog.by_id("alpha")
    assert alpha is not None and alpha.available and alpha.error is None
    assert alpha.name == "Alpha"
    assert alpha.directory == a
    assert alpha.config_file == a / "config.yaml"
    assert alpha.model_path == a / "model.gguf"
    assert alpha.config is not None
    assert alpha.config["llama"]["ctx_size"] == 512  # merged with the global config
    assert alpha.config["server"]["port"] == 11435
    summary = alpha.summary()
    assert summary["available"] is True
    assert summary["size_bytes"] == len(b"GGUF fake weights")


def test_config_yml_spelling_is_found(models_dir: Path, global_cfg: GlobalConfig) -> None:
    d = models_dir / "y"
    d.mkdir()
    (d / "config.yml").write_text(model_config("yml-model"))
    (d / "model.gguf").write_bytes(b"GGUF")
    assert discover(models_dir, global_cfg).ids == ["yml-model"]


def test_broken_model_is_unavailable_and_others_stay(models_dir: Path,
                                                      global_cfg: GlobalConfig) -> None:
    add_model(models_dir, "a-good", model_config("good"))
    broken = add_model(models_dir, "b-broken", "id: broken\nmodel_file: [unclosed\n")
    add_model(models_dir, "c-other", model_config("other"))

    catalog = discover(models_dir, global_cfg)

    entries = by_key(catalog)
    assert set(entries) == {"good", "b-broken", "other"}
    bad = entries["b-broken"]
    assert not bad.available
    assert bad.id is None
    assert bad.error is not None
    assert bad.error.startswith(f"{broken / 'config.yaml'}:")
    assert "invalid YAML" in bad.error
    assert entries["good"].available and entries["other"].available
    assert bad.summary()["error"] == bad.error


def test_invalid_model_config_error_names_line_and_key(models_dir: Path,
                                                       global_cfg: GlobalConfig) -> None:
    d = add_model(models_dir, "m", model_config("m", extra="llama:\n  gpu_layers: many\n"))
    (entry,) = discover(models_dir, global_cfg).entries
    assert not entry.available
    assert entry.error == (f"{d / 'config.yaml'}:5: llama.gpu_layers: "
                           "expected an integer, got 'many'")


def test_duplicate_id(models_dir: Path, global_cfg: GlobalConfig) -> None:
    first = add_model(models_dir, "a-first", model_config("same"))
    second = add_model(models_dir, "b-second", model_config("same"))

    catalog = discover(models_dir, global_cfg)

    assert len(catalog.entries) == 2
    one, two = catalog.entries
    assert one.available and one.directory == first
    assert catalog.by_id("same") is one
    assert not two.available
    assert two.id is None
    assert two.directory == second
    assert str(second / "config.yaml") in two.error
    assert str(first / "config.yaml") in two.error  # names the file that has the id
    assert "unique" in two.error
    assert two.key != "same"


@pytest.mark.parametrize("model_file", ["../x.gguf", "sub/../../x.gguf", "..", "/tmp/x.gguf"])
def test_model_file_must_stay_in_its_directory(models_dir: Path, global_cfg: GlobalConfig,
                                               model_file: str) -> None:
    (models_dir / "x.gguf").write_bytes(b"GGUF")  # exists, but outside the model's dir
    d = add_model(models_dir, "m", model_config("m", model_file=model_file))

    entry, stray = discover(models_dir, global_cfg).entries
    assert stray.source == "file" and stray.model_path == models_dir / "x.gguf"  # not m's

    assert not entry.available
    assert entry.model_path is None
    assert entry.error.startswith(f"{d / 'config.yaml'}:3: model_file: ")
    assert "relative to" in entry.error


def test_subdirectory_model_file_is_fine(models_dir: Path, global_cfg: GlobalConfig) -> None:
    d = add_model(models_dir, "m", model_config("m", model_file="weights/model.gguf"), gguf=None)
    (d / "weights").mkdir()
    (d / "weights" / "model.gguf").write_bytes(b"GGUF")
    (entry,) = discover(models_dir, global_cfg).entries
    assert entry.available, entry.error
    assert entry.model_path == d / "weights" / "model.gguf"


def test_missing_gguf_is_unavailable(models_dir: Path, global_cfg: GlobalConfig) -> None:
    d = add_model(models_dir, "m", model_config("m", model_file="absent.gguf"), gguf=None)
    add_model(models_dir, "n", model_config("n"))

    catalog = discover(models_dir, global_cfg)

    entry = catalog.by_id("m")
    assert entry is not None and not entry.available
    assert entry.error == f"{d / 'config.yaml'}:3: model_file: {d / 'absent.gguf'} does not exist"
    assert catalog.by_id("n").available
    assert entry.summary()["size_bytes"] is None


def test_symlinked_gguf_inside_the_directory(models_dir: Path, global_cfg: GlobalConfig,
                                             tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "real.gguf"
    target.parent.mkdir()
    target.write_bytes(b"GGUF real bytes")
    d = add_model(models_dir, "m", model_config("m"), gguf=None)
    (d / "model.gguf").symlink_to(target)

    (entry,) = discover(models_dir, global_cfg).entries

    assert entry.available, entry.error
    assert entry.model_path == d / "model.gguf"
    assert entry.summary()["size_bytes"] == len(b"GGUF real bytes")


def test_dangling_symlink_is_unavailable(models_dir: Path, global_cfg: GlobalConfig,
                                         tmp_path: Path) -> None:
    d = add_model(models_dir, "m", model_config("m"), gguf=None)
    (d / "model.gguf").symlink_to(tmp_path / "gone.gguf")
    (entry,) = discover(models_dir, global_cfg).entries
    assert not entry.available
    assert "does not exist" in entry.error


def test_missing_models_dir_is_an_empty_catalog(tmp_path: Path,
                                                global_cfg: GlobalConfig) -> None:
    catalog = discover(tmp_path / "no" / "such" / "gguf", global_cfg)
    assert catalog.entries == []
    assert catalog.ids == []
    assert catalog.by_id("anything") is None
