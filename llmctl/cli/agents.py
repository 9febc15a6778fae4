"""The coding agents `llmctl launch` can start, and what each needs from the model.

One row per agent: the program, the API dialect it speaks, whether it sends `tools` (so the
model must be able to take them: daemon/backend/tool_calls.py), the context its own system prompt and
tool definitions take before the first word of the user's (measured or documented, rounded
up to a power of two: the model's context must be at least this), and how it is pointed at
llmctld for one run (environment variables, command-line arguments, a private config file in
a temporary directory). docs/clients.md has the same table for users.

| agent | program | dialect | tools | context at least |
|---|---|---|---|---|
| claude (claude-code) | claude | Anthropic /v1/messages | yes | 16384 (its system prompt and tools are ~15k tokens) |
| opencode | opencode | OpenAI /v1/chat/completions | yes | 16384 (~10k tokens) |
| codex | codex | OpenAI /v1/responses | yes | 16384 (~9k tokens) |
| aider | aider | OpenAI /v1/chat/completions | no (edits as text) | 8192 (~2-4k tokens, plus the repo map) |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

API_KEY = "llmctl"
MODEL = "local"


@dataclass(frozen=True)
class Setup:
    """What a launch changes for the agent's process: its environment, the arguments before
    the user's, and files written into the run's private directory (name -> text)."""
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()  # variables of the user's environment the agent must not see


@dataclass(frozen=True)
class Agent:
    name: str
    title: str
    program: str
    dialect: str
    needs_tools: bool
    min_context: int
    prompt_note: str  # what takes the context, for the refusal's wording
    # (llmctld's URL, the run's private directory, the model's context per request)
    setup: Callable[[str, Path, int], Setup]
    connect: str | None  # the `llmctl connect` recipe --write uses, if there is one


# Variables that keep an agent from phoning home (telemetry, update checks, error reports):
# a local model should work with no network but loopback.
_CLAUDE_QUIET = {
    "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
    "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
_OPENCODE_QUIET = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "OPENCODE_DISABLE_SHARE": "1",
}


def _claude(url: str, private: Path, context: int) -> Setup:
    # ANTHROPIC_AUTH_TOKEN: Claude Code sends it as a Bearer token and asks for no login
    # (a key of the user's for Anthropic itself would make it ask which credential to use)
    return Setup({"ANTHROPIC_BASE_URL": url, "ANTHROPIC_AUTH_TOKEN": API_KEY,
                  **_CLAUDE_QUIET}, unset=("ANTHROPIC_API_KEY",))


def opencode_config(url: str, context: int | None = None) -> dict[str, object]:
    model: dict[str, object] = {"name": "llmctl: the active model", "tool_call": True}
    if context:
        model["limit"] = {"context": context, "output": min(8192, max(256, context // 4))}
    return {"$schema": "https://opencode.ai/config.json",
            "provider": {"llmctl": {
                "npm": "@ai-sdk/openai-compatible", "name": "llmctl (local)",
                "options": {"baseURL": f"{url}/v1", "apiKey": API_KEY},
                "models": {MODEL: model}}},
            "model": f"llmctl/{MODEL}", "autoupdate": False, "share": "disabled"}


def _opencode(url: str, private: Path, context: int) -> Setup:
    config = private / "opencode.json"
    return Setup({"OPENCODE_CONFIG": str(config), **_OPENCODE_QUIET},
                 files={config.name: json.dumps(opencode_config(url, context), indent=2)
                        + "\n"})


def _codex(url: str, private: Path, context: int) -> Setup:
    # -c overrides for this run only: ~/.codex/config.toml is not touched
    provider = (f'{{name="llmctl",base_url="{url}/v1",wire_api="responses",'
                f'env_key="LLMCTL_CODEX_KEY"}}')
    return Setup({"LLMCTL_CODEX_KEY": API_KEY},
                 ["-c", f"model_providers.llmctl={provider}", "-c", "model_provider=llmctl",
                  "-c", f"model={MODEL}", "-c", "check_for_update_on_startup=false"])


def _aider(url: str, private: Path, context: int) -> Setup:
    return Setup({"OPENAI_API_BASE": f"{url}/v1", "OPENAI_API_KEY": API_KEY,
                  "AIDER_ANALYTICS": "false", "AIDER_CHECK_UPDATE": "false"},
                 ["--model", f"openai/{MODEL}", "--no-show-model-warnings"])


AGENTS: dict[str, Agent] = {a.name: a for a in (
    Agent("claude-code", "Claude Code", "claude", "anthropic", True, 16384,
          "Claude Code's system prompt and tools take about 15k tokens", _claude,
          "claude-code"),
    Agent("opencode", "opencode", "opencode", "openai", True, 16384,
          "opencode's system prompt and tools take about 10k tokens", _opencode, "opencode"),
    Agent("codex", "Codex CLI", "codex", "openai-responses", True, 16384,
          "Codex's instructions and tools take about 9k tokens", _codex, None),
    Agent("aider", "aider", "aider", "openai", False, 8192,
          "aider's prompts and repository map take 2-8k tokens", _aider, "aider"),
)}
ALIASES = {"claude": "claude-code"}  # as `ollama launch claude`
AGENT_NAMES = (*ALIASES, *AGENTS)


def agent(name: str) -> Agent:
    return AGENTS[ALIASES.get(name, name)]
