"""Import hygiene, checked in fresh interpreters: the supervisor side never imports gevent (it
forks workers; only the proxy worker monkey-patches), and the CLI stays light."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_fresh(code: str) -> str:
    """What `code` prints, run in a fresh interpreter that imports llmctl from this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return out.stdout


def modules_after_import(*modules: str) -> set[str]:
    return set(json.loads(run_fresh("import importlib, json, sys\n"
                                    f"for name in {list(modules)!r}:\n"
                                    "    importlib.import_module(name)\n"
                                    "print(json.dumps(sorted(sys.modules)))\n")))


def top_level(modules: set[str]) -> set[str]:
    return {m.partition(".")[0] for m in modules}


def test_daemon_main_and_supervisor_do_not_import_gevent() -> None:
    loaded = modules_after_import("llmctl.daemon.processes.main", "llmctl.daemon.processes.supervisor")
    assert {"llmctl.daemon.processes.main", "llmctl.daemon.processes.supervisor"} <= loaded
    assert "gevent" not in top_level(loaded)


@pytest.mark.parametrize("heavy", ["werkzeug", "yaml", "rapidfuzz", "llmctl.core.config",
                                   "llmctl.daemon.api.hub"])
def test_supervisor_holds_only_what_it_needs(supervisor_modules: set[str], heavy: str) -> None:
    """It lives as long as the daemon: the config is read in a preflight child, the workers
    import their own stacks after the fork."""
    assert heavy not in supervisor_modules | top_level(supervisor_modules)


def test_the_workers_load_rapidfuzz_only_for_a_name_that_needs_it() -> None:
    """~2 MB of compiled modules, for typo suggestions: not held by a worker that never
    resolves a misspelt name."""
    loaded = modules_after_import("llmctl.daemon.api.app", "llmctl.daemon.processes.lifecycle_worker")
    assert "llmctl.core.resolve" in loaded and "rapidfuzz" not in top_level(loaded)


@pytest.fixture(scope="module")
def supervisor_modules() -> set[str]:
    return modules_after_import("llmctl.daemon.processes.main", "llmctl.daemon.processes.supervisor",
                                "llmctl.daemon.processes.preflight")


@pytest.mark.parametrize("heavy", ["gevent", "werkzeug", "yaml", "rapidfuzz"])
def test_cli_is_light(cli_modules: set[str], heavy: str) -> None:
    assert heavy not in top_level(cli_modules)


def test_no_cli_module_imports_the_process_protocol() -> None:
    """Its 14 frozen dataclasses cost ~10 ms to create: only the supervisor pays that, once
    (the workers inherit it through fork); the CLI speaks HTTP and needs none of it. Every
    module of the CLI and the client is imported, and every module they import inside a
    function (the commands import lazily)."""
    files = sorted((ROOT / "llmctl").glob("cli/[a-z]*.py")) + \
        sorted((ROOT / "llmctl").glob("client/[a-z]*.py"))
    names = [f"llmctl.{f.parent.name}.{f.stem}" for f in files]
    lazy = {m for f in files for m in re.findall(r"^\s+from (llmctl[\w.]*) import",
                                                 f.read_text(), re.MULTILINE)}
    loaded = modules_after_import(*names, *sorted(lazy))
    assert set(names) <= loaded
    assert not {"llmctl.daemon.ipc.protocol", "llmctl.daemon.backend.lifecycle"} & loaded


@pytest.fixture(scope="module")
def cli_modules() -> set[str]:
    loaded = modules_after_import("llmctl.cli.main")
    assert "llmctl.cli.main" in loaded
    return loaded


def test_the_lifecycle_worker_needs_no_http_client() -> None:
    """Its one health check is a raw socket: no http.client, email package or ssl to hold."""
    loaded = modules_after_import("llmctl.daemon.processes.main", "llmctl.daemon.processes.supervisor",
                                  "llmctl.daemon.processes.lifecycle_worker")
    assert not {"http.client", "ssl", "email"} & loaded


def test_the_proxy_worker_patches_without_scanning_entry_points() -> None:
    """gevent's patch_all asks importlib.metadata for plugin entry points ~25 times, each a scan
    of every installed package (and importlib.metadata itself is ~2 MB); proxy_worker's
    monkey_patch announces to in-process subscribers only, and still patches everything
    patch_all patches but ssl."""
    code = ("import sys\n"
            "from llmctl.daemon.processes.proxy_worker import monkey_patch\n"
            "monkey_patch()\n"
            "from gevent import monkey\n"
            "patched = [n for n in ('socket', 'select', 'time', 'threading', 'subprocess',"
            " 'signal', 'ssl') if monkey.is_module_patched(n)]\n"
            "print('importlib.metadata' in sys.modules, ','.join(patched))\n")
    scanned, patched = run_fresh(code).split()
    assert scanned == "False"
    assert patched == "socket,select,time,threading,subprocess,signal"
