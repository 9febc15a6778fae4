"""llama.cpp RPC workers as llmctld sees them: machines whose rpc-server (run there by
`llmctl worker`) lends its devices to the active model, through llama-server's --rpc.

llmctld does not run the workers; it knows their addresses (`workers:` in the config), checks
their health and tells everyone: records.py (one worker's health, and what a model needing
workers is refused for), health.py (the checker: a thread of the lifecycle worker that looks
at each worker on an interval, off the request path, without disturbing one that serves) and
view.py (the proxy worker's mirror of the last results, for /status, /models, /metrics and
the dashboard). What the lifecycle does about them (refuse a switch, name the worker behind a
failure, stop a backend whose worker died) is backend/rpc_guard.py; their --rpc flag is
backend/llama_server.py's; the wire probe is core/rpc_probe.py (`llmctl worker` shares it).
"""
