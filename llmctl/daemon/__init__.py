"""The daemon llmctld: a supervisor (supervisor.py) forks a gevent proxy worker
(proxy_worker.py, serving app.py and openai_proxy.py) and a lifecycle worker
(lifecycle_worker.py, driving daemon/backend/lifecycle.py), connected through channel.py.
"""
