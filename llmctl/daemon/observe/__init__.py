"""What llmctld shows about itself: what each proxied request did (observer.py, usage.py),
Prometheus /metrics (metrics.py, gpu.py), the ring of recent requests (activity.py), and
their routes (routes.py)."""
