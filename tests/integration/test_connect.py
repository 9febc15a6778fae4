"""`llmctl connect <client>`: the printed recipe for each client, and `--write` merging it
into the client's own file (keeping what is there, with a backup). Runs the CLI as a
subprocess in a temporary HOME; no daemon is needed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import ROOT

URL = "http://127.0.0.1:23456"


def connect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMCTL_", "XDG_", "CLAUDE_"))}
    env.update(HOME=str(tmp_path), LLMCTL_HOST="127.0.0.1", LLMCTL_PORT="23456",
               LLMCTL_HOME=str(tmp_path / "llmctl"))
    return subprocess.run([str(ROOT / "bin" / "llmctl"), "connect", *args], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("client, expected", [
    ("claude-code", ['"ANTHROPIC_BASE_URL": "http://127.0.0.1:23456"',
                     ".claude/settings.json", "ANTHROPIC_AUTH_TOKEN"]),
    ("opencode", ['"baseURL": "http://127.0.0.1:23456/v1"', "@ai-sdk/openai-compatible",
                  ".config/opencode/opencode.json", '"model": "llmctl/local"']),
    ("continue", ["apiBase: http://127.0.0.1:23456/v1", "provider: llama.cpp",
                  "apiBase: http://127.0.0.1:23456/\n", ".continue/config.yaml"]),
    ("aider", ["openai-api-base: http://127.0.0.1:23456/v1", "model: openai/local",
               ".aider.conf.yml"]),
    ("llama-vscode", ['"llama-vscode.endpoint": "http://127.0.0.1:23456"', "/infill",
                      "settings.json"]),
    ("open-webui", ["export OPENAI_API_BASE_URL=http://127.0.0.1:23456/v1", "--network=host"]),
    ("openai", ["export OPENAI_BASE_URL=http://127.0.0.1:23456/v1",
                'base_url="http://127.0.0.1:23456/v1"']),
    ("anthropic", ["export ANTHROPIC_BASE_URL=http://127.0.0.1:23456\n",
                   'anthropic.Anthropic(base_url="http://127.0.0.1:23456"']),
])
def test_connect_prints_each_clients_recipe(tmp_path: Path, client: str,
                                            expected: list[str]) -> None:
    out = connect(tmp_path, client)
    assert out.returncode == 0, out.stderr
    for text in expected:
        assert text in out.stdout, f"{text!r} not in:\n{out.stdout}"
    assert not (tmp_path / ".claude").exists() and not (tmp_path / ".config").exists()


def test_connect_json_is_the_recipe_as_data(tmp_path: Path) -> None:
    out = connect(tmp_path, "opencode", "--json")
    data = json.loads(out.stdout)
    assert data["client"] == "opencode" and data["url"] == URL
    assert data["file"] == str(tmp_path / ".config" / "opencode" / "opencode.json")
    assert data["settings"]["provider"]["llmctl"]["options"]["baseURL"] == URL + "/v1"


def test_write_merges_into_existing_files_with_a_backup(tmp_path: Path) -> None:
    claude = tmp_path / ".claude" / "settings.json"
    claude.parent.mkdir()
    original = {"permissions": {"allow": ["Bash(ls)"]}, "env": {"FOO": "1"}}
    claude.write_text(json.dumps(original))
    out = connect(tmp_path, "claude-code", "--write")
    assert out.returncode == 0, out.stderr
    assert f"to {claude}" in out.stdout and "llmctl-backup" in out.stdout
    written = json.loads(claude.read_text())
    assert written["permissions"] == original["permissions"]
    assert written["env"] == {"FOO": "1", "ANTHROPIC_BASE_URL": URL,
                              "ANTHROPIC_AUTH_TOKEN": "llmctl"}
    assert json.loads((claude.parent / "settings.json.llmctl-backup").read_text()) == original

    opencode = tmp_path / ".config" / "opencode" / "opencode.json"
    opencode.parent.mkdir(parents=True)
    opencode.write_text(json.dumps({"model": "anthropic/claude-sonnet-4-6", "theme": "dark"}))
    assert connect(tmp_path, "opencode", "--write").returncode == 0
    written = json.loads(opencode.read_text())
    assert written["model"] == "anthropic/claude-sonnet-4-6"  # the user's choice is kept
    assert written["theme"] == "dark" and "llmctl" in written["provider"]

    continue_file = tmp_path / ".continue" / "config.yaml"
    continue_file.parent.mkdir()
    continue_file.write_text(yaml.safe_dump({"name": "Mine", "version": "0.0.1", "models": [
        {"name": "gpt", "provider": "openai", "model": "gpt-4o"},
        {"name": "llmctl", "provider": "openai", "model": "old", "apiBase": "http://x/v1"}]}))
    for _ in range(2):  # writing twice replaces our entries instead of adding more
        assert connect(tmp_path, "continue", "--write").returncode == 0
    written = yaml.safe_load(continue_file.read_text())
    assert written["name"] == "Mine"
    assert [m["name"] for m in written["models"]] == ["gpt", "llmctl", "llmctl autocomplete"]
    assert written["models"][1]["apiBase"] == URL + "/v1"

    assert connect(tmp_path, "aider", "--write").returncode == 0
    aider = yaml.safe_load((tmp_path / ".aider.conf.yml").read_text())
    assert aider == {"openai-api-base": URL + "/v1", "openai-api-key": "llmctl",
                     "model": "openai/local"}


def test_write_refuses_what_it_cannot_edit_safely(tmp_path: Path) -> None:
    broken = tmp_path / ".claude" / "settings.json"
    broken.parent.mkdir()
    broken.write_text("{ not json")
    out = connect(tmp_path, "claude-code", "--write")
    assert out.returncode == 1 and "is not valid JSON" in out.stderr
    assert broken.read_text() == "{ not json"  # untouched
    out = connect(tmp_path, "llama-vscode", "--write")
    assert out.returncode == 2 and "VS Code's settings.json" in out.stderr
    out = connect(tmp_path, "nonsense")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_claude_is_claude_code(tmp_path: Path) -> None:
    """`claude` (what Ollama's users type) names the same recipe as `claude-code`, printed
    and written."""
    out = connect(tmp_path, "claude")
    assert out.returncode == 0, out.stderr
    assert out.stdout == connect(tmp_path, "claude-code").stdout
    assert connect(tmp_path, "claude", "--write").returncode == 0
    settings = json.loads((tmp_path / ".claude" / "settings.json").read_text())
    assert settings["env"]["ANTHROPIC_BASE_URL"] == URL
