"""An Ollama-compatible API under /api/*, for the clients that speak only Ollama.

It is a facade, not a second server: every generation is translated into a request to the
active llama-server and sent through the same gate as /v1 (openai_proxy.OpenAIProxy.open: the
in-flight count, the busy rule, the default-model load), and its answer is translated back as it
arrives. The package has one module per job:

- routes.py: the WSGI entry point; which route does what, errors in Ollama's shape;
- translate.py: Ollama request -> llama-server request (messages, images, tools, format,
  options, think, keep_alive), and a whole llama-server answer -> an Ollama answer;
- stream.py: llama-server's SSE stream -> Ollama's NDJSON stream, one event at a time;
- catalog.py: what /api/tags, /api/show and /api/ps say about models (GGUF facts,
  capabilities).
"""

from llmctl.daemon.ollama.routes import OllamaAPI, ollama_error

__all__ = ["OllamaAPI", "ollama_error"]
