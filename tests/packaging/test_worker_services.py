"""`llmctl worker` under a real service supervisor (runit's runsv), installed from
contrib/runit/llmctl-worker the way a user would, with a settings file pointing at this
checkout: the rpc-server answers the RPC hello, one killed under the worker is restarted by
the worker, a SIGKILLed worker is restarted by runsv and leaves no orphan rpc-server, and
stopping the service stops both."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from servicekit import CONTRIB, REPO, alive, require_tool, run, service_account

from llmctl.core.rpc_probe import probe

from harness import Home, Ports, wait_for

STOP_TIMEOUT = 30


def rpc_servers(port: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("rpc-server") and str(port) in cmdline and \
                alive(proc):
            found.append(proc)
    return found


@pytest.fixture
def runit_worker(home: Home, ports: Ports, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    for tool in ("runsv", "sv", "svlogd", "chpst"):
        require_tool(tool)
    port = ports.take()
    svdir = tmp_path / "sv" / "llmctl-worker"
    shutil.copytree(CONTRIB / "runit" / "llmctl-worker", svdir, symlinks=True)
    user, group = service_account()
    (svdir / "conf").write_text(
        f"LLMCTL='{REPO / 'bin' / 'llmctl'}'\nLLMCTL_USER='{user}'\nLLMCTL_GROUP='{group}'\n"
        f"LLMCTL_RUNTIME_HOME='{tmp_path / 'run'}'\nLLMCTL_LOG_DIR='{tmp_path / 'log'}'\n"
        f"LLMCTL_WORKER_ARGS='--port {port} --name svc'\n"
        f'PATH="{Path(sys.executable).parent}:$PATH"\n')
    with open(tmp_path / "runsv.log", "wb") as out:
        proc = subprocess.Popen(["runsv", str(svdir)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=home.env, start_new_session=True)
    yield svdir, port
    run("sv", "exit", str(svdir), timeout=STOP_TIMEOUT + 5)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    for leftover in rpc_servers(port):
        leftover.kill()


def main_pid(svdir: Path) -> int | None:
    try:
        text = (svdir / "supervise" / "pid").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def test_runit_supervises_llmctl_worker(runit_worker: tuple[Path, int], tmp_path: Path) -> None:
    svdir, port = runit_worker
    log = tmp_path / "log" / "current"

    def ready(count: int) -> None:
        """The worker's own word that its rpc-server answers (it looks every 50 ms), then
        a look of our own."""
        wait_for(lambda: log.exists() and log.read_text().count(" ready on 127.0.0.1:") >= count,
                 30, f"the worker to report a ready rpc-server ({count})", log)
        assert probe("127.0.0.1", port, 1.0).up

    ready(1)
    worker = psutil.Process(wait_for(lambda: main_pid(svdir), 10, "runsv's pid of the worker"))
    assert " ".join(worker.cmdline()).startswith("llmctl worker: svc")  # exec'd, titled
    [first] = rpc_servers(port)

    first.kill()  # the worker restarts its rpc-server; runsv sees nothing
    ready(2)
    assert main_pid(svdir) == worker.pid
    [second] = rpc_servers(port)
    assert second.pid != first.pid

    os.kill(worker.pid, signal.SIGKILL)  # runsv restarts the worker; its child died with it
    wait_for(lambda: (pid := main_pid(svdir)) is not None and pid != worker.pid, 20,
             "runsv to restart the worker")
    wait_for(lambda: not alive(second), 10, "the killed worker's rpc-server to be gone")
    ready(3)
    assert len(rpc_servers(port)) == 1

    result = run("sv", "-w", str(STOP_TIMEOUT), "down", str(svdir), timeout=STOP_TIMEOUT + 5)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: rpc_servers(port) == [], 10, "the rpc-server to stop with the service")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    text = log.read_text()
    assert "was killed by SIGKILL; restarting it" in text, text
    assert "received SIGTERM: stopping rpc-server" in text, text
