"""The web dashboard: static HTML, JS and CSS shipped in the package, served by the proxy
worker at `/` and `/ui/<asset>`.

There is no build step and nothing from a CDN: the page is plain files read from this package
(package data in pyproject.toml). It drives the daemon only through the public HTTP API, from
its own origin, so the Host/Origin guard treats its requests like any other browser's. The
answers forbid framing (Content-Security-Policy frame-ancestors, X-Frame-Options): a page on
another site must not be able to put the dashboard in a frame and steer the user's clicks.
"""

from __future__ import annotations

from importlib import resources

from werkzeug.wrappers import Response

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def asset(name: str) -> Response | None:
    """The named file with its headers, or None when there is no such asset."""
    content_type = ASSETS.get(name)
    if content_type is None:
        return None
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return Response(body, content_type=content_type, headers=HEADERS)
