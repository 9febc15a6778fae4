"""The daemon llmctld, one subpackage per job (docs/architecture.md has the map):

- processes/  the process shape: entry point, supervisor, proxy and lifecycle workers
- ipc/        how the processes talk: the framed channel, its typed messages, commands
- backend/    owns llama-server: switch, load, stop, adopt; its flags, logs and process
- admission/  who may use the backend when: leases, the busy rule, routing, idle unload
- relay/      where a proxied byte goes: /v1 and llama-server's own routes, to llama-server
- api/        the control face: the WSGI app, its routes, and the proxy worker's views
- observe/    what it shows: metrics, activity, GPU memory
- rpc/        llama.cpp RPC workers: their health, checked and mirrored
- ollama/     the Ollama-compatible /api/*
- ui/         the dashboard's static files
"""
