"""Where a proxied byte goes: /v1/* and llama-server's native routes to the active
llama-server and back (openai_proxy.py, native_routes.py), with the socket-level helpers it
streams through (sockio.py, chunked.py, headers.py), a model's request overrides
(overrides.py) and the repair of a streamed Anthropic answer (anthropic_stream.py)."""
