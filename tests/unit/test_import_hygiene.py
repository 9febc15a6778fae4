"""Import hygiene, checked in fresh interpreters: the supervisor side never imports gevent (it
forks workers; only the proxy worker monkey-patches), and the CLI stays light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def modules_after_import(*modules: str) -> set[str]:
    code = ("import importlib, json, sys\n"
            f"for name in {list(modules)!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def top_level(modules: set[str]) -> set[str]:
    return {m.partition(".")[0] for m in modules}


def test_daemon_main_and_supervisor_do_not_import_gevent() -> None:
    loaded = modules_after_import("llmctl.daemon.main", "llmctl.daemon.supervisor")
    assert {"llmctl.daemon.main", "llmctl.daemon.supervisor"} <= loaded
    assert "gevent" not in top_level(loaded)


@pytest.mark.parametrize("heavy", ["werkzeug", "yaml", "rapidfuzz", "llmctl.core.config",
                                   "llmctl.daemon.hub"])
def test_supervisor_holds_only_what_it_needs(supervisor_modules: set[str], heavy: str) -> None:
    """It lives as long as the daemon: the config is read in a preflight child, the workers
    import their own stacks after the fork."""
    assert heavy not in supervisor_modules | top_level(supervisor_modules)


@pytest.fixture(scope="module")
def supervisor_modules() -> set[str]:
    return modules_after_import("llmctl.daemon.main", "llmctl.daemon.supervisor",
                                "llmctl.daemon.preflight")


@pytest.mark.parametrize("heavy", ["gevent", "werkzeug", "yaml", "rapidfuzz"])
def test_cli_is_light(cli_modules: set[str], heavy: str) -> None:
    assert heavy not in top_level(cli_modules)


@pytest.fixture(scope="module")
def cli_modules() -> set[str]:
    loaded = modules_after_import("llmctl.cli.main")
    assert "llmctl.cli.main" in loaded
    return loaded
