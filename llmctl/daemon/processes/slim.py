"""Keeping the proxy worker's start-up import set small: it is the gap a client sees after a
`kill -9` of the proxy, and the memory of the largest of llmctld's three processes.

Two libraries the proxy needs pull in much that it does not, from their package `__init__`:
- werkzeug's imports the development server (`werkzeug.serving`: http.server, socketserver,
  ssl) and the test client (`werkzeug.test`), to offer `werkzeug.run_simple` and
  `werkzeug.Client`; the proxy uses only routing, wrappers and exceptions;
- prometheus_client's imports every exporter (the HTTP and WSGI servers, the push gateway
  client: urllib.request, wsgiref, ssl) and the process and platform collectors; the proxy
  keeps counters at start-up and renders the text format only when /metrics is scraped.

`bare_package(name)` registers such a package without running its `__init__`, as the import
system allows (a package in sys.modules is the parent its submodules are imported into,
through its `__path__`), so `import werkzeug.routing` loads routing and what routing imports,
nothing else. Code that runs in the proxy imports these libraries' submodules by name
(`prometheus_client.exposition`, not `prometheus_client`); the package-level names
(`werkzeug.Client`, `prometheus_client.generate_latest`) are not there.

`without_ssl()`: nothing in the proxy speaks TLS (llama-server is on loopback; `llmctl pull`
runs in its own process), yet http.client imports ssl (libssl and libcrypto: ~1 MB PSS in the
proxy, measured) for its HTTPSConnection. While the block runs, ssl counts as missing, which
http.client allows for: it then has no HTTPSConnection. `import_needing_https(name)` is for
the one module that wants it anyway, prometheus_client's exposition (its push-gateway client
imports urllib.request's HTTPSHandler), imported at the first /metrics scrape: it imports the
module against a fresh http.client of its own, with ssl, and leaves the proxy's (the relay's
subclass and header parsing live on it) where it was.

`give_back_free_memory()`: each process calls it once it serves (the supervisor before it
forks), so what start-up freed is not held for the daemon's life.

tests/integration/test_startup_imports.py starts the real daemon and fails if these come
back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType


def bare_package(name: str) -> None:
    """Register package `name` with its `__path__` but without running its `__init__`; a
    no-op when it is imported already or not installed."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return
    sys.modules[name] = importlib.util.module_from_spec(spec)


@contextlib.contextmanager
def without_ssl() -> Iterator[None]:
    """ssl counts as not installed inside the block (unless it is imported already)."""
    if "ssl" in sys.modules:
        yield
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # the import system's "missing"
    try:
        yield
    finally:
        if sys.modules.get("ssl", 0) is None:
            del sys.modules["ssl"]


def import_needing_https(name: str) -> ModuleType:
    """Import `name`, which needs http.client's HTTPSConnection, in a process whose
    http.client was imported without ssl (without_ssl): against a fresh http.client (and
    urllib.request) of its own; `http.client` stays the module everyone else uses."""
    import http
    import http.client

    if hasattr(http.client, "HTTPSConnection") or name in sys.modules:
        return importlib.import_module(name)
    ours = sys.modules.pop("http.client")
    try:
        return importlib.import_module(name)
    finally:
        sys.modules["http.client"] = ours
        http.client = ours  # the import system bound the fresh one to the package


def give_back_free_memory() -> None:
    """Return the C heap's free pages to the kernel (glibc's malloc_trim): start-up frees
    much of what it allocated (file contents, compile-time buffers), and the allocator keeps
    those pages otherwise. Measured ~0.5 MB USS in a proxy worker. Where there is no glibc,
    nothing happens."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)
