"""relay/refusals.py on llama-server's own error bodies (b11434, captured from the real
binary: tests/integration/test_refusals.py drives the same refusals end to end)."""

from __future__ import annotations

import json

import pytest

from llmctl.daemon.relay import refusals

OVERFLOW = (400, b'{"error":{"code":400,"message":"request (659 tokens) exceeds the available '
            b'context size (256 tokens), try increasing it","type":"exceed_context_size_error",'
            b'"n_prompt_tokens":659,"n_ctx":256}}')
NO_JINJA = (500, b'{"error":{"code":500,"message":"tools param requires --jinja flag",'
            b'"type":"server_error"}}')
NO_EMBEDDINGS = (501, b'{"error":{"code":501,"message":"This server does not support '
                 b'embeddings. Start it with `--embeddings`","type":"not_supported_error"}}')
NO_RERANK = (501, b'{"error":{"code":501,"message":"This server does not support reranking. '
             b'Start it with `--reranking`","type":"not_supported_error"}}')
TOOL_CHOICE = (500, b'{"error":{"code":500,"message":"Unsupported param: tool_choice",'
               b'"type":"server_error"}}')
LOADING = (503, b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}')


@pytest.mark.parametrize("answer, kind, words", [
    (OVERFLOW, "context_length_exceeded",
     ["the prompt is 659 tokens, longer than the 256-token context model m is loaded with",
      "raise llama.ctx_size for model m in /c.yaml (then `llmctl switch m`)"]),
    (NO_JINJA, "tools_unsupported",
     ["model m cannot take requests with tools: this model has no chat template",
      "--chat-template-file FILE]"]),
    (NO_EMBEDDINGS, "embeddings_unsupported", ["set llama.embeddings: true"]),
    (NO_RERANK, "reranking_unsupported", ["set llama.reranking: true"]),
    (TOOL_CHOICE, "unsupported_parameter", ["does not accept the parameter `tool_choice`"]),
])
def test_each_refusal_names_the_model_and_the_fix(answer, kind, words) -> None:
    refusal = refusals.classify(*answer, "m", "/c.yaml")
    assert refusal is not None and refusal.kind == kind and refusal.status == 400
    for text in words:
        assert text in refusal.message, refusal.message


@pytest.mark.parametrize("answer", [LOADING, (500, b'{"error":{"message":"boom"}}'),
                                    (404, NO_JINJA[1]), (500, b"x" * 70_000)])
def test_anything_else_passes_through(answer) -> None:
    assert refusals.classify(*answer, "m") is None


def test_the_three_shapes() -> None:
    refusal = refusals.classify(*OVERFLOW, "m")
    assert refusal is not None
    openai = json.loads(refusals.body_for_path("/v1/chat/completions", refusal))
    assert openai == {"error": {"message": refusal.message, "type": "invalid_request_error",
                                "code": "context_length_exceeded"}}
    anthropic = json.loads(refusals.body_for_path("/v1/messages", refusal))
    assert anthropic == {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": refusal.message}}
    assert json.loads(refusals.body_for_path("/api/chat", refusal)) == {"error": refusal.message}
