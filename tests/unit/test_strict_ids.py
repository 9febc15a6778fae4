"""Names are matched whole: with `^...$` and re.match, `$` also matches before a trailing
newline, so "m\\n" passed as a model id (and as an alias, a default model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.core.config import ConfigError, load_global, load_model_file
from llmctl.daemon.kvcache.store import KvStore


def test_a_config_id_with_a_newline_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text('id: "qwen\\n"\nmodel_file: m.gguf\n')
    with pytest.raises(ConfigError, match="not a valid id"):
        load_model_file(file)


def test_an_alias_with_a_newline_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text('id: qwen\nmodel_file: m.gguf\naliases: ["coder\\n"]\n')
    with pytest.raises(ConfigError, match="not a usable name"):
        load_model_file(file)


def test_a_default_model_with_a_newline_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "default.yaml"
    file.write_text('daemon:\n  default_model: "qwen\\n"\n')
    with pytest.raises(ConfigError, match="not a model id"):
        load_global(file)


def test_the_kv_store_never_makes_a_directory_of_such_a_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a model id"):
        KvStore(tmp_path).model_dir("qwen\n")
