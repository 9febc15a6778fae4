"""llama-server's deterministic refusals, told to the client as what they are.

Some requests llama-server will refuse every time, whatever the retry: tools for a model run
without Jinja (`500 tools param requires --jinja flag`), a prompt longer than the context
(`400 exceed_context_size_error`), embeddings from a model started without `--embeddings`
(`501 not_supported_error`), a parameter it does not take (`500 Unsupported param: X`).
Passed through as they come, the 500s read as "a server-side issue, usually temporary" and
coding agents retry them for minutes. So llmctld answers them with a 400 in the shape of the
API the client spoke (OpenAI `{"error": {"message", "type", "code"}}`, Anthropic
`{"type": "error", "error": {"type": "invalid_request_error", "message"}}`, Ollama
`{"error": "..."}`) and a message that names the model and the fix.

Everything else (a crashed or loading backend, llmctld's own 503 with Retry-After, any error
not recognised here) keeps its status and body: those are worth a retry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# An error body bigger than this is not one of llama-server's refusals (they are one line)
MAX_REFUSAL_BODY = 64 * 1024
REFUSAL_STATUSES = frozenset((400, 500, 501))

_UNSUPPORTED = re.compile(r"^Unsupported param: (\S+)")
_OVERFLOW = re.compile(r"request \((\d+) tokens\) exceeds the available context size "
                       r"\((\d+) tokens\)")


@dataclass(frozen=True)
class Refusal:
    kind: str  # context_length_exceeded | tools_unsupported | embeddings_unsupported | unsupported_parameter
    message: str
    status: int = 400


def _error_of(payload: bytes) -> tuple[str, str, dict[str, Any]]:
    """(message, type, the whole error object) of llama-server's error body."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace").strip()[:500], "", {}
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or ""), str(error.get("type") or ""), error
    if isinstance(error, str):
        return error, "", {}
    return "", "", {}


def classify(status: int, payload: bytes, model: str | None,
             config_file: str | None = None) -> Refusal | None:
    """The refusal this error answer of llama-server is, or None (then pass it on as it is).
    `model` is the model that answered, `config_file` where its configuration lives."""
    if status not in REFUSAL_STATUSES or len(payload) > MAX_REFUSAL_BODY:
        return None
    message, type_, error = _error_of(payload)
    name = model or "the active model"
    where = f" in {config_file}" if config_file else " in its config.yaml"
    switch = f"`llmctl switch {model}`" if model else "`llmctl switch <model>`"
    said = f" (llama-server: {message})"
    if type_ == "exceed_context_size_error" or "exceeds the available context size" in message:
        found = _OVERFLOW.search(message)
        prompt = error.get("n_prompt_tokens") or (found and int(found.group(1)))
        ctx = error.get("n_ctx") or (found and int(found.group(2)))
        sizes = (f"the prompt is {prompt} tokens, longer than the {ctx}-token context"
                 if prompt and ctx else "the prompt is longer than the context")
        return Refusal("context_length_exceeded", (
            f"{sizes} model {name} is loaded with: raise llama.ctx_size for model {name}{where} "
            f"(then {switch}), use a model with a larger context, or send a shorter prompt"
            + said))
    if "requires --jinja" in message or message == "Cannot use tools with stream":
        return Refusal("tools_unsupported", (
            f"model {name} cannot take requests with tools: this model has no chat template "
            "that formats them (llama-server runs it without Jinja). Give it one "
            f"(llama.extra_args: [--jinja, --chat-template-file FILE]{where}, then {switch}), "
            "use a model whose GGUF has a chat template, or send the request without tools"
            + said))
    unsupported = _UNSUPPORTED.match(message)
    if unsupported:
        param = unsupported.group(1)
        hint = (f"; tool_choice needs a Jinja chat template (llama.extra_args: [--jinja, "
                f"--chat-template-file FILE]{where})" if param == "tool_choice" else "")
        return Refusal("unsupported_parameter", (
            f"model {name}: llama-server does not accept the parameter `{param}` here: "
            f"remove it from the request{hint}" + said))
    lowered = message.lower()
    if status == 501 and "embedding" in lowered:
        return Refusal("embeddings_unsupported", (
            f"model {name} does not serve embeddings: set llama.embeddings: true (and "
            f"llama.pooling, e.g. mean){where}, then {switch}, or switch to an embedding "
            "model" + said))
    if status == 501 and "rerank" in lowered:
        return Refusal("reranking_unsupported", (
            f"model {name} does not rerank: set llama.reranking: true and llama.pooling: "
            f"rank{where}, then {switch}, or switch to a reranking model" + said))
    return None


# --- the three shapes ---------------------------------------------------------------------------


def openai_body(refusal: Refusal) -> bytes:
    return json.dumps({"error": {"message": refusal.message, "type": "invalid_request_error",
                                 "code": refusal.kind}}).encode()


def anthropic_body(refusal: Refusal) -> bytes:
    return json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                  "message": refusal.message}}).encode()


def ollama_body(refusal: Refusal) -> bytes:
    return json.dumps({"error": refusal.message}).encode()


def body_for_path(path: str, refusal: Refusal) -> bytes:
    """The refusal in the shape of the API under `path` (/v1/messages: Anthropic's)."""
    if path.startswith("/v1/messages"):
        return anthropic_body(refusal)
    if path.startswith("/api/"):
        return ollama_body(refusal)
    return openai_body(refusal)
