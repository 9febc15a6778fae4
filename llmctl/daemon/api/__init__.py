"""The control face of the proxy worker: the WSGI app and its route table (app.py), the
router-style model management (router_api.py), POST /pull (pull_route.py), the saved KV
caches (cache_route.py), long listings as JSON that yield to the loop (listing.py), the one
error body (errors.py) and the Host/Origin guard (security.py); and the proxy worker's parts wired
together in hub.py: its mirror of the backend record (backend_view.py) and its view of the
configuration and catalog (config_view.py)."""
