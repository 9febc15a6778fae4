"""What llmctld shows about itself: what each proxied request did (observer.py, usage.py; what
the first request after a KV-cache restore reused: kv_reuse.py),
Prometheus /metrics (metrics.py, gpu.py), the ring of recent requests (activity.py), and
their routes (routes.py)."""
