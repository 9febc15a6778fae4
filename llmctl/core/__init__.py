"""Core logic shared by the daemon's workers: paths, configuration, discovery, matching,
state file, llama-server command line and the backend lifecycle.

Nothing here imports gevent or werkzeug: the supervisor and the lifecycle worker use it too.
"""
