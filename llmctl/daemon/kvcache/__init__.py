"""KV-cache continuity: each model's KV cache, kept across switches, idle unloads and
restarts, so a switch back costs the load and not the conversation.

Owned here, used by the lifecycle worker's stopping and loading phases (which alone talk to
llama-server's slot API) and read by the proxy for its views:

- policy.py      whether a model's cache is kept (cache.persist, sliding-window attention and
                 --swa-full, projectors, restores that reused nothing) and why, in words
- identity.py    the fingerprint of a launch as far as a saved cache is concerned
- store.py       the files under $LLMCTL_RUNTIME_HOME/kv/: per model and fingerprint, written
                 under a temporary name and renamed, private, bounded (LRU), stale ones dropped
- slots.py       llama-server's /slots list, save and restore over HTTP, each with a deadline
- transfer.py    a save or restore run in a thread, so the lifecycle loop ticks through it
- command.py     the lifecycle worker's Cache command (list, clear) and KvReuse notice
- view.py        what `llmctl inspect` shows of a model (read-only, the proxy)
- continuity.py  what the lifecycle's phases call: plan a launch, start and finish a save or
                 a restore, list and clear, learn what a restore reused

It never decides when a backend stops or loads, and holds no llama-server process (command.py
reads the backend record it is given, to show what a restore reused).
"""
