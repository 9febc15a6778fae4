"""Everything that owns llama-server, run by the lifecycle worker only.

lifecycle.py is the entry point (messages in, periodic ticks); its jobs are context.py (the
backend record, state.json, messages out), adoption.py (boot), loading.py (switch and load),
stopping.py (stop; a KV-cache save first) and default_model.py (Ensure); the KV cache
itself is daemon/kvcache/'s. Beside them: llama_server.py (the binary and its flags),
process.py (spawn, adopt, signal, health), stall.py, catalog.py (the model catalog as the
lifecycle reads it), catalog_memo.py (the catalog kept while nothing on disk changed; the
proxy's config view asks it too), starter.py and rpc_guard.py (what a switch, a load and a ready backend
do about RPC workers). The log file and exit wording live in core/ (log_file.py, exits.py):
`llmctl worker` shares them."""
