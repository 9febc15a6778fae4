"""What the CLI and the daemon share: paths, configuration, the model catalog (discovery,
scan, ids, aliases, GGUF headers), name matching, the state file, and adding and pulling
models. Nothing here imports llmctl.daemon or llmctl.cli, gevent or werkzeug."""
