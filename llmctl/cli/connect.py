"""`llmctl connect <client>`: the configuration that points a client application at llmctld.

One recipe per client (docs/clients.md explains each): what to put where, for this daemon's
address. By default it is printed; `--write` merges it into the client's own configuration
file (keeping everything else there, with a backup of the previous file beside it), for the
clients whose configuration is a plain JSON or YAML file. Clients configured by environment
variables, VS Code settings (JSON with comments) or code get the text to paste instead.

This module never talks to the daemon: the address comes from the same lookup the CLI uses.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "local"
API_KEY = "llmctl"  # llmctld checks no key; clients that insist on one get this
BACKUP_SUFFIX = ".llmctl-backup"


class Recipe:
    """How one client is pointed at llmctld."""

    def __init__(self, name: str, title: str, settings: Callable[[str], Any], *,
                 file: Callable[[dict[str, str]], Path] | None = None, fmt: str = "json",
                 merge: Callable[[Any, Any], Any] | None = None,
                 notes: Callable[[str], str] = lambda url: "",
                 configured: str = "in your code or environment"):
        self.name, self.title, self.settings, self.file = name, title, settings, file
        self.fmt = fmt  # json | yaml (a file's format) | env (environment variables)
        self.merge, self.notes, self.configured = merge or _deep_merge, notes, configured

    @property
    def writable(self) -> bool:
        return self.file is not None


def _home(env: dict[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def _xdg_config(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else \
        _home(env) / ".config"


def _deep_merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for key, value in new.items():
            out[key] = _deep_merge(old.get(key), value)
        return out
    return new


# --- the recipes -------------------------------------------------------------------------------


def _claude_code(url: str) -> dict[str, Any]:
    # Claude Code reads `env` from settings.json for every session; with ANTHROPIC_AUTH_TOKEN it
    # sends `Authorization: Bearer`, and it never asks Anthropic for a login.
    return {"env": {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": API_KEY}}


def _opencode(url: str) -> dict[str, Any]:
    return {"$schema": "https://opencode.ai/config.json",
            "provider": {"llmctl": {
                "npm": "@ai-sdk/openai-compatible", "name": "llmctl (local)",
                "options": {"baseURL": f"{url}/v1"},
                "models": {MODEL: {"name": "llmctl: the active model",
                                   "tool_call": True}}}},
            "model": f"llmctl/{MODEL}"}


def _opencode_merge(old: Any, new: dict[str, Any]) -> Any:
    if isinstance(old, dict) and old.get("model"):  # keep the user's default model choice
        new = {k: v for k, v in new.items() if k != "model"}
    return _deep_merge(old, new)


def _continue(url: str) -> dict[str, Any]:
    return {"name": "Local Assistant", "version": "1.0.0", "schema": "v1", "models": [
        {"name": "llmctl", "provider": "openai", "model": MODEL, "apiBase": f"{url}/v1",
         "apiKey": API_KEY, "roles": ["chat", "edit", "apply"],
         "capabilities": ["tool_use"]},
        # Continue's llama.cpp provider posts to {apiBase}completion: the trailing slash matters
        {"name": "llmctl autocomplete", "provider": "llama.cpp", "model": MODEL,
         "apiBase": f"{url}/", "roles": ["autocomplete"]},
    ]}


def _continue_merge(old: Any, new: dict[str, Any]) -> Any:
    if not isinstance(old, dict):
        return new
    ours = {m["name"] for m in new["models"]}
    models = [m for m in old.get("models") or [] if not (isinstance(m, dict) and
                                                         m.get("name") in ours)]
    return {**{k: v for k, v in new.items() if k != "models"}, **old,
            "models": models + new["models"]}


def _aider(url: str) -> dict[str, Any]:
    return {"openai-api-base": f"{url}/v1", "openai-api-key": API_KEY,
            "model": f"openai/{MODEL}"}


def _llama_vscode(url: str) -> dict[str, Any]:
    return {"llama-vscode.endpoint": url, "llama-vscode.endpoint_chat": url,
            "llama-vscode.endpoint_tools": url, "llama-vscode.endpoint_embeddings": url,
            "llama-vscode.ai_model": MODEL, "llama-vscode.ai_api_version": "v1"}


def _open_webui(url: str) -> dict[str, Any]:
    return {"OPENAI_API_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": API_KEY}


def _sdk_env(variable: str, suffix: str) -> Callable[[str], dict[str, Any]]:
    return lambda url: {variable: url + suffix}


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("claude-code", "Claude Code", _claude_code,
           file=lambda env: Path(env["CLAUDE_CONFIG_DIR"]) / "settings.json"
           if env.get("CLAUDE_CONFIG_DIR") else _home(env) / ".claude" / "settings.json",
           notes=lambda url: (
               "Or for one shell only:\n"
               f"  ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN={API_KEY} claude\n"
               "Claude Code asks for claude-* models; llmctld answers with the active one.")),
    Recipe("opencode", "opencode", _opencode, merge=_opencode_merge,
           file=lambda env: _xdg_config(env) / "opencode" / "opencode.json",
           notes=lambda url: "Pick it in opencode with /models (llmctl/local)."),
    Recipe("continue", "Continue (VS Code, JetBrains)", _continue, fmt="yaml",
           merge=_continue_merge,
           file=lambda env: _home(env) / ".continue" / "config.yaml"),
    Recipe("aider", "aider", _aider, fmt="yaml",
           file=lambda env: _home(env) / ".aider.conf.yml",
           notes=lambda url: f"Or: aider --openai-api-base {url}/v1 --openai-api-key "
                             f"{API_KEY} --model openai/{MODEL}"),
    Recipe("llama-vscode", "llama.vscode", _llama_vscode,
           configured="in VS Code's settings.json (which may hold comments)",
           notes=lambda url: (
               "Add these to VS Code's settings.json (Preferences: Open User Settings (JSON)).\n"
               "Completions go to /infill (the model needs fill-in-the-middle tokens, e.g. a "
               "Qwen2.5-Coder); chat and tools to /v1/chat/completions.")),
    Recipe("open-webui", "Open WebUI", _open_webui, fmt="env",
           configured="by its environment or its admin settings",
           notes=lambda url: (
               "Set these in Open WebUI's environment, e.g.\n"
               "  docker run -d --network=host -v open-webui:/app/backend/data "
               f"-e OPENAI_API_BASE_URL={url}/v1 -e OPENAI_API_KEY={API_KEY} "
               "ghcr.io/open-webui/open-webui:main\n"
               "(--network=host: llmctld listens on loopback only; the UI is then on :8080), or\n"
               "add the connection in Admin Settings > Connections > OpenAI API.")),
    Recipe("openai", "the openai SDKs (Python, JS)", _sdk_env("OPENAI_BASE_URL", "/v1"), fmt="env",
           notes=lambda url: (
               "export them, or in code:\n"
               f"  client = openai.OpenAI(base_url=\"{url}/v1\", api_key=\"{API_KEY}\")\n"
               f"  client.chat.completions.create(model=\"{MODEL}\", messages=[...])")),
    Recipe("anthropic", "the anthropic SDKs (Python, JS)", _sdk_env("ANTHROPIC_BASE_URL", ""),
           fmt="env",
           notes=lambda url: (
               "export them, or in code:\n"
               f"  client = anthropic.Anthropic(base_url=\"{url}\", api_key=\"{API_KEY}\")\n"
               "  client.messages.create(model=\"claude-sonnet-4-6\", max_tokens=1024, "
               "messages=[...])")),
)}
ALIASES = {"claude": "claude-code"}  # as `ollama launch claude`
CLIENT_NAMES = (*ALIASES, *RECIPES)


# --- printing and writing ----------------------------------------------------------------------


def render(recipe: Recipe, url: str, env: dict[str, str]) -> str:
    body = _dump(recipe.settings(url), recipe.fmt)
    where = (f"in {recipe.file(env)} (`llmctl connect {recipe.name} --write` merges it in):"
             if recipe.file is not None else
             "environment:" if recipe.fmt == "env" else "settings:")
    notes = recipe.notes(url)
    return f"# {recipe.title} -> llmctld at {url}, {where}\n{body.rstrip()}\n" + (
        f"\n{notes}\n" if notes else "")


def write(recipe: Recipe, url: str, env: dict[str, str]) -> tuple[Path, Path | None]:
    """Merge the recipe into the client's file; returns it and the backup of the old one."""
    assert recipe.file is not None
    path = recipe.file(env)
    old: Any = None
    backup = None
    if path.exists():
        text = path.read_text(encoding="utf-8")
        try:
            old = _load(text, recipe.fmt)
        except ValueError as e:
            raise ConnectError(f"{path} is not valid {recipe.fmt.upper()} ({e}); fix it, or "
                               "paste the settings `llmctl connect "
                               f"{recipe.name}` prints yourself") from None
        if old is not None and not isinstance(old, dict):
            raise ConnectError(f"{path} does not hold a mapping at the top level; paste the "
                               f"settings `llmctl connect {recipe.name}` prints yourself")
        backup = path.with_name(path.name + BACKUP_SUFFIX)
        backup.write_text(text, encoding="utf-8")
    merged = recipe.merge(old, recipe.settings(url))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.llmctl-tmp")
    tmp.write_text(_dump(merged, recipe.fmt), encoding="utf-8")
    os.replace(tmp, path)
    return path, backup


class ConnectError(Exception):
    pass


def _dump(data: Any, fmt: str) -> str:
    if fmt == "env":
        return "".join(f"export {name}={value}\n" for name, value in data.items())
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return json.dumps(data, indent=2) + "\n"


def _load(text: str, fmt: str) -> Any:
    if not text.strip():
        return None
    if fmt == "yaml":
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(str(e).splitlines()[0]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(str(e)) from None


def run(client_name: str, do_write: bool, as_json: bool, url: str) -> int:
    recipe = RECIPES[ALIASES.get(client_name, client_name)]
    env = dict(os.environ)
    if as_json:
        print(json.dumps({"client": recipe.name, "url": url, "settings": recipe.settings(url),
                          "file": str(recipe.file(env)) if recipe.file else None}))
        if not do_write:
            return 0
    if not do_write:
        sys.stdout.write(render(recipe, url, env))
        return 0
    if not recipe.writable:
        print(f"llmctl: {recipe.title} is configured {recipe.configured}, not by a file llmctl "
              f"can edit safely; run `llmctl connect {recipe.name}` and set what it prints",
              file=sys.stderr)
        return 2
    try:
        path, backup = write(recipe, url, env)
    except (ConnectError, OSError) as e:
        print(f"llmctl: {e}", file=sys.stderr)
        return 1
    if not as_json:
        saved = f" (the previous file is saved as {backup})" if backup else ""
        print(f"wrote {recipe.title}'s configuration for {url} to {path}{saved}")
        notes = recipe.notes(url)
        if notes:
            print(notes)
    return 0

