"""What real client applications send, recorded from their source or documentation, so tests
can send exactly that through llmctld (paths, headers, body shapes, streaming). Each builder
names where its shape comes from. Bodies are as small as the shape allows."""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

# --- llama.vscode (ggml-org/llama.vscode) ------------------------------------------------------


def llama_vscode_infill(prefix: str, suffix: str) -> dict[str, Any]:
    """POST {endpoint}/infill for a suggestion: src/llama-server.ts, createRequestPayload()
    with defaultRequestParams; the ring-buffer chunks go in input_extra, the text of the
    cursor's line before the cursor in prompt."""
    return {
        "input_prefix": prefix, "input_suffix": suffix,
        "input_extra": [{"text": "def helper():\n    return 1\n", "time": 1764580000,
                         "filename": "util.py"}],
        "prompt": "    ", "n_predict": 16, "top_k": 40, "top_p": 0.99, "stream": False,
        "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "n_indent": 4,
        "t_max_prompt_ms": 500, "t_max_predict_ms": 1000,
    }


def llama_vscode_chat(content: str) -> dict[str, Any]:
    """POST {endpoint_chat}/{ai_api_version}/chat/completions: createChatRequestPayload()."""
    return {"messages": [{"role": "system", "content": "You are an expert coder."},
                         {"role": "user", "content": content}],
            "stream": False, "temperature": 0.8, "model": "local", "max_tokens": 8}


def llama_vscode_embeddings(text: str) -> dict[str, Any]:
    """POST {endpoint_embeddings}/v1/embeddings: getEmbeddings() (it sends model GPT-4)."""
    return {"input": text, "model": "GPT-4", "encoding_format": "float"}


# --- Claude Code -------------------------------------------------------------------------------

# Claude Code talks to ANTHROPIC_BASE_URL through the Anthropic TypeScript SDK's beta client,
# which posts to /v1/messages?beta=true (anthropic-sdk-typescript,
# src/resources/beta/messages/messages.ts). The LLM-gateway guide
# (docs.claude.com/en/docs/claude-code/llm-gateway) lists what a gateway must serve:
# /v1/messages and /v1/messages/count_tokens, passing on anthropic-beta and anthropic-version.
CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
                      "fine-grained-tool-streaming-2025-05-14",
    "anthropic-dangerous-direct-browser-access": "true",
    "authorization": "Bearer llmctl",  # ANTHROPIC_AUTH_TOKEN
    "x-app": "cli",
    "user-agent": "claude-cli/2.0.14 (external, cli)",
    "x-stainless-lang": "js", "x-stainless-retry-count": "0",
}

CLAUDE_CODE_TOOL = {
    "name": "Read", "description": "Reads a file from the local filesystem.",
    "input_schema": {"type": "object", "properties": {
        "file_path": {"type": "string", "description": "The absolute path to the file"}},
        "required": ["file_path"], "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#"},
}


def claude_code_messages(text: str, *, stream: bool = True) -> dict[str, Any]:
    """A turn as Claude Code sends it: system prompt blocks with cache_control, content as
    blocks, its tools, metadata.user_id, streaming."""
    return {
        "model": "claude-sonnet-4-6", "max_tokens": 16, "temperature": 1,
        "stream": stream,
        "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI.",
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}],
        "tools": [CLAUDE_CODE_TOOL],
        "metadata": {"user_id": "user_0123_account__session_4567"},
    }


def claude_code_count_tokens(text: str) -> dict[str, Any]:
    body = claude_code_messages(text)
    return {k: body[k] for k in ("model", "system", "messages", "tools")}


# --- OpenAI-compatible chat clients ------------------------------------------------------------


def opencode_chat(text: str) -> dict[str, Any]:
    """opencode's provider `@ai-sdk/openai-compatible` (vercel/ai,
    packages/openai-compatible/src/chat/openai-compatible-chat-language-model.ts): POST
    {baseURL}/chat/completions, tools as OpenAI functions, a stream with usage."""
    return {
        "model": "local", "max_tokens": 8, "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "You are opencode."},
                     {"role": "user", "content": text}],
        "tools": [{"type": "function", "function": {
            "name": "bash", "description": "Run a shell command.",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                           "required": ["command"]}}}],
        "tool_choice": "auto",
    }


def continue_autocomplete(api_base: str, prompt: str) -> tuple[str, dict[str, str],
                                                              dict[str, Any]]:
    """Continue's llama.cpp provider (continuedev/continue core/llm/llms/LlamaCpp.ts,
    _streamComplete): POST new URL("completion", apiBase), a stream, with an Authorization
    header even without a key (then it reads `Bearer undefined`)."""
    url = urljoin(api_base, "completion")
    headers = {"Content-Type": "application/json", "Authorization": "Bearer undefined"}
    body = {"prompt": prompt, "stream": True, "n_predict": 8, "stop": ["\n\n"],
            "temperature": 0.01, "top_k": 40, "top_p": 0.95}
    return url, headers, body


def open_webui_chat(text: str) -> dict[str, Any]:
    """Open WebUI's OpenAI connection (open-webui backend/open_webui/routers/openai.py,
    generate_chat_completion): POST {OPENAI_API_BASE_URL}/chat/completions with the UI's
    payload and a bearer key, streamed; GET {OPENAI_API_BASE_URL}/models lists the models."""
    return {"model": "local", "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": text}]}
