"""`llmctl worker`: one llama.cpp rpc-server, supervised, on a machine that lends its devices
to a llmctld elsewhere (docs/multi-machine.md).

It is its own small supervisor, not a part of llmctld: rpc_server.py finds the rpc-server
binary and builds its command line (and refuses an address beyond loopback unless the user
allows it: rpc-server has no authentication); supervisor.py runs it in the foreground,
restarts it by the rules llmctld's supervisor follows (core/restarts.py), forwards signals,
logs to a file and leaves no orphan. The CLI imports this package only when the command runs.
"""
