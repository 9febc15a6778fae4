"""The LSB init script (contrib/sysvinit/llmctld) driven by its own verbs.

The script reads its settings from the file named by $LLMCTL_DEFAULTS (normally
/etc/default/llmctld); the test writes one that points at this checkout and a temp home.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from servicekit import CONTRIB, ServiceEnv, alive, describe, process_tree, require_tool, run

SCRIPT = CONTRIB / "sysvinit" / "llmctld"
START_TIMEOUT = 20


@pytest.fixture
def initscript(service_env: ServiceEnv) -> Iterator[Callable[[str], subprocess.CompletedProcess]]:
    require_tool("start-stop-daemon")
    defaults = service_env.root.parent / "llmctld.default"
    defaults.write_text(service_env.settings(START_TIMEOUT=str(START_TIMEOUT), STOP_TIMEOUT="30"))
    env = {**service_env.home.env, "LLMCTL_DEFAULTS": str(defaults)}

    def verb(name: str) -> subprocess.CompletedProcess:
        return run("sh", str(SCRIPT), name, env=env)

    yield verb
    verb("stop")


def daemon_pid(env: ServiceEnv) -> int:
    return int(env.pidfile.read_text().split()[0])


def test_sysvinit_start_status_reload_restart_stop(
    service_env: ServiceEnv, initscript: Callable[[str], subprocess.CompletedProcess]
) -> None:
    assert initscript("status").returncode == 3

    started = initscript("start")
    assert started.returncode == 0, started.stdout + started.stderr + service_env.log_text()
    # start returns once llmctld has written its pidfile; /health follows at once.
    service_env.wait(service_env.healthy, "llmctld to answer /health")
    pid = daemon_pid(service_env)
    status = initscript("status")
    assert (status.returncode, f"(pid {pid})" in status.stdout) == (0, True), status.stdout

    again = initscript("start")
    assert again.returncode == 0 and daemon_pid(service_env) == pid, again.stdout + again.stderr

    service_env.switch()
    assert initscript("reload").returncode == 0
    assert service_env.healthy() and daemon_pid(service_env) == pid

    restarted = initscript("restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert service_env.healthy() and daemon_pid(service_env) != pid
    assert service_env.llama_servers() == [], "restart stops the old llmctld's llama-server"
    pid = daemon_pid(service_env)
    service_env.switch()

    tree = process_tree(pid) + service_env.llama_servers()
    stopped = initscript("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    # stop returns after llmctld has exited; its llama-server must be gone by then too.
    assert not any(alive(p) for p in tree), describe([p for p in tree if alive(p)])
    assert service_env.llama_servers() == []
    assert initscript("status").returncode == 3
    assert initscript("stop").returncode == 0
    assert (service_env.log_dir / "llmctld.log").stat().st_size > 0


def test_sysvinit_start_fails_at_once_when_the_port_is_taken(
    service_env: ServiceEnv, initscript: Callable[[str], subprocess.CompletedProcess]
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", service_env.daemon_port))
        began = time.monotonic()
        started = initscript("start")
        took = time.monotonic() - began
    assert started.returncode != 0, started.stdout + started.stderr
    assert "did not start" in started.stderr
    # llmctld gives up at once; start must notice that, not sit out START_TIMEOUT.
    assert took < START_TIMEOUT / 2, f"start took {took:.1f}s to report the failure"
    assert initscript("status").returncode == 3  # not running, and no stale pidfile left
