"""Whether a model's llama-server can take a request with `tools` at all.

llama-server formats tools only through a Jinja chat template: started with `--no-jinja`
(the last of `--jinja` / `--no-jinja` in llama.extra_args wins; Jinja is on by default) it
answers every request that carries `tools` with `500 tools param requires --jinja flag`.
A model in that state is marked "no tool calls" in `llmctl models` and `llmctl inspect`,
and `llmctl launch` refuses to start a coding agent on it.

Whether the model then *uses* the tools well is another matter (a base model rarely does);
this says only whether requests with tools are formatted instead of refused.
"""

from __future__ import annotations

from typing import Any


def jinja_enabled(extra_args: list[Any]) -> bool:
    enabled = True
    for arg in extra_args:
        if arg == "--jinja":
            enabled = True
        elif arg == "--no-jinja":
            enabled = False
    return enabled


def no_tool_calls(config: dict[str, Any] | None, facts: dict[str, Any] | None,
                  config_file: str | None) -> str | None:
    """Why this model cannot take tools (with what to do), or None when it can."""
    if not config:
        return None
    if jinja_enabled(list(config["llama"].get("extra_args") or [])):
        return None
    has_template = bool((facts or {}).get("chat_template"))
    where = f" in {config_file}" if config_file else " in its config.yaml"
    why = "its config runs llama-server with --no-jinja" + (
        "" if has_template else " and its GGUF has no chat template")
    return (f"no tool calls: {why}, so llama-server refuses requests with tools; give it a "
            f"Jinja chat template (llama.extra_args: [--jinja, --chat-template-file FILE]{where})"
            " or use a model whose GGUF has one")
