"""The process shape of llmctld: the entry point (main.py) and its preflight children, the
supervisor that holds the socket and restarts the workers (supervisor.py, with workers.py and
switchboard.py), the gevent proxy worker (proxy_worker.py, serving through wsgi_server.py) and
the lifecycle worker (lifecycle_worker.py). Only the proxy worker imports gevent."""
