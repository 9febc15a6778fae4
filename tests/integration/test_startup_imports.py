"""What each of llmctld's processes has imported once it serves, from the real entry point.

A proxy worker's start is the gap a client sees after a `kill -9` of it, and every module a
process holds is memory for the daemon's whole life. These modules were cut from start-up
(bench: the cold, restart and memory sections); each test fails if one comes back. The list
comes from the processes themselves (processes/imported.py, LLMCTL_TEST_MODULES_DIR), written
when each is ready.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness import Daemon, Home, wait_for

ROLES = ("supervisor", "proxy", "lifecycle")

# module -> the processes that must not hold it at start-up, and why
HEAVY: dict[str, tuple[tuple[str, ...], str]] = {
    "werkzeug.serving": (ROLES, "werkzeug's dev server (http.server, socketserver, ssl)"),
    "werkzeug.test": (ROLES, "werkzeug's test client"),
    "http.server": (ROLES, "only werkzeug.serving and prometheus' exporters import it"),
    "ssl": (ROLES, "nothing in llmctld speaks TLS; http.client imports it for HTTPS"),
    "gevent.ssl": (ROLES, "patch_all(ssl=False): nothing here speaks TLS"),
    "importlib.metadata": (ROLES, "gevent's plugin look-up scans every installed package"),
    "zipfile": (ROLES, "importlib.metadata's"),
    "prometheus_client.exposition": (ROLES, "the text format: imported at the first scrape"),
    "urllib.request": (ROLES, "prometheus' push-gateway client"),
    "wsgiref": (ROLES, "prometheus' WSGI exporter"),
    "llmctl.core.pull": (ROLES, "the pull stack: imported by POST /pull"),
    "llmctl.daemon.api.pull_route": (ROLES, "imported by POST /pull"),
    "llmctl.daemon.ollama": (ROLES, "the Ollama facade: built by the first /api/ request"),
    "llmctl.daemon.memory.listing": (ROLES, "built by the first listing that shows memory"),
    "rapidfuzz": (ROLES, "only for a misspelt model name"),
    "prometheus_client": (("supervisor", "lifecycle"), "only the proxy serves /metrics"),
    "http.client": (("supervisor", "lifecycle"), "the lifecycle's health check is a raw socket"),
    "gevent": (("supervisor", "lifecycle"), "only the proxy worker is a gevent process"),
    "werkzeug": (("supervisor", "lifecycle"), "only the proxy worker serves HTTP"),
    "yaml": (("supervisor",), "the config is read in a preflight child"),
    "llmctl.core.config": (("supervisor",), "the config is read in a preflight child"),
    "psutil": (("supervisor", "proxy"), "the lifecycle worker's, for llama-server"),
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The daemon started once for the module; every process's module list."""
    from harness import Ports

    root = tmp_path_factory.mktemp("imports")
    home = Home(root / "home", Ports().take())
    out = root / "modules"
    out.mkdir()
    home.extra_env["LLMCTL_TEST_MODULES_DIR"] = str(out)
    daemon = Daemon(home, root / "llmctld.log")
    daemon.start()
    try:
        wait_for(lambda: all((out / f"{r}.txt").exists() for r in ROLES), 20,
                 "every process's module list", daemon.log)
        lists = {r: set((out / f"{r}.txt").read_text().split()) for r in ROLES}
        # the deferred parts still work once asked for
        assert daemon.get("/metrics").status_code == 200
        assert daemon.get("/api/tags").status_code == 200
    finally:
        daemon.stop()
    return lists


def holds(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


def test_every_process_wrote_its_list(loaded: dict[str, set[str]]) -> None:
    assert {"llmctl.daemon.processes.supervisor"} <= loaded["supervisor"]
    assert {"gevent", "werkzeug.routing", "prometheus_client.metrics"} <= loaded["proxy"]
    assert {"llmctl.daemon.backend.lifecycle"} <= loaded["lifecycle"]


@pytest.mark.parametrize("module", sorted(HEAVY))
def test_start_up_does_not_import(loaded: dict[str, set[str]], module: str) -> None:
    roles, why = HEAVY[module]
    offenders = [r for r in roles if holds(loaded[r], module)]
    assert not offenders, f"{module} is imported at start-up by {offenders} ({why})"


def test_the_seam_is_off_without_the_variable(home: Home,
                                              make_daemon: Callable[..., Daemon],
                                              tmp_path: Path) -> None:
    daemon = make_daemon()
    assert daemon.get("/health").status_code == 200
    assert not list(tmp_path.glob("**/proxy.txt"))
