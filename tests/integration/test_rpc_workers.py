"""A model spread over llama.cpp RPC workers, end to end with REAL processes on loopback: two
`llmctl worker` processes (each a supervised ggml-rpc-server) stand in for two machines, and
llmctld's real llama-server uses both through --rpc.

Proven here: the model loads on both workers (llama-server's argv and log name them), answers
the same tokens as the local run at temperature 0, and llmctld's checks never disturb a
worker its llama-server holds; an rpc-server killed under a worker is restarted by the
worker, while the backend that lost it is stopped and reported as such (no restart loop); a
stopped worker is shown down within the check interval, a switch needing it fails at once
with exit 8 naming it (from the CLI, and from the lifecycle worker itself for the default
model), and it is up again once it is back; `llmctl worker` refuses an open address, gives
up with the reason after repeated failed starts, and leaves no orphan.

Fixture order matters: `workers` is set up before `make_daemon`, so llmctld is stopped before
its workers (llama-server aborts when a worker vanishes under it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from harness import ROOT, Daemon, Home, Ports, owned_backends, wait_for
from rpckit import RpcWorker

pytestmark = pytest.mark.real_backend

CHECK = 0.5  # daemon.rpc_check_interval in these tests (seconds)
CHAT = {"messages": [{"role": "user", "content": "once upon a time"}], "max_tokens": 24,
        "temperature": 0, "ignore_eos": True}


@pytest.fixture
def workers(home: Home, ports: Ports, tmp_path: Path) -> Iterator[dict[str, RpcWorker]]:
    started = {name: RpcWorker(home, name, ports.take(), tmp_path) for name in ("a", "b")}
    for worker in started.values():
        worker.start()
    yield started
    for worker in started.values():
        if worker.proc is not None and worker.proc.poll() is None:
            worker.stop()


@pytest.fixture
def rpc_home(real_home: Home, tiny_gguf: Path, workers: dict[str, RpcWorker]) -> Home:
    real_home.write_config(workers={n: w.address for n, w in workers.items()},
                           daemon={"rpc_check_interval": f"{CHECK}s"})
    # -lv 4: llama-server names the devices it uses only at that verbosity
    real_home.add_model("tiny-rpc", tiny_gguf, llama={"workers": "all",
                                                      "extra_args": ["-lv", "4"]})
    real_home.add_model("tiny-b", tiny_gguf, llama={"workers": ["b"]})
    return real_home


def worker_states(daemon: Daemon) -> dict[str, str]:
    return {w["name"]: w["state"] for w in daemon.status()["workers"]}


def wait_workers(daemon: Daemon, want: dict[str, str], timeout: float = 10) -> None:
    wait_for(lambda: worker_states(daemon) == want, timeout, f"workers {want}", daemon.log)


def chat(daemon: Daemon) -> str:
    r = daemon.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_a_model_on_two_workers_loads_and_answers_like_the_local_run(
        workers: dict[str, RpcWorker], rpc_home: Home, make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    wait_workers(daemon, {"a": "up", "b": "up"})
    assert daemon.switch("tiny-alpha").status_code == 200
    local = chat(daemon)

    before = {n: w.accepted() for n, w in workers.items()}
    r = daemon.switch("tiny-rpc")
    assert r.status_code == 200, r.text
    log = (rpc_home.runtime / "logs" / "tiny-rpc.log").read_text()
    a, b = workers["a"].address, workers["b"].address
    assert f"--rpc {a},{b}" in log.splitlines()[0]  # the argv, as llmctl logged it
    assert f"using device RPC0 ({a})" in log and f"using device RPC1 ({b})" in log
    assert f"RPC0[{a}] model buffer size" in log  # the weights went there
    assert all(workers[n].accepted() > before[n] for n in workers)

    assert chat(daemon) == local  # the same computation, split over three processes

    status = daemon.status()
    assert {w["name"]: (w["state"], w["in_use"]) for w in status["workers"]} == {
        "a": ("up", "tiny-rpc"), "b": ("up", "tiny-rpc")}
    assert status["workers"][0]["address"] == a and status["workers"][0]["version"] == "7.0.0"
    text = daemon.cli("status").stdout
    assert f"workers  a  {a}  up since" in text and "(serving tiny-rpc; 1 device," in text
    up = [line for line in daemon.get("/metrics").text.splitlines()
          if line.startswith("llmctl_rpc_worker_up{")]
    assert len(up) == 2 and all(line.endswith(" 1.0") and 'state="up"' in line for line in up)
    assert any('worker="a"' in line and f'address="{a}"' in line for line in up)

    # llmctld keeps checking, yet no probe reaches a worker its llama-server holds: rpc-server
    # serves one client at a time, and queued probes would lock the next llama-server out
    held = {n: w.accepted() for n, w in workers.items()}
    checked = status["workers"][0]["checked_at"]
    wait_for(lambda: daemon.status()["workers"][0]["checked_at"] > checked + 3 * CHECK, 15,
             "three more rounds of checks", daemon.log)
    assert {n: w.accepted() for n, w in workers.items()} == held
    assert chat(daemon) == local


def test_an_rpc_server_killed_under_a_worker_is_restarted_and_the_backend_says_which(
        workers: dict[str, RpcWorker], rpc_home: Home, make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-rpc").status_code == 200
    first = workers["b"].rpc_server()
    assert first is not None
    first.kill()

    workers["b"].wait_ready(count=2)  # the worker restarted it
    second = workers["b"].rpc_server()
    assert second is not None and second.pid != first.pid
    assert "was killed by SIGKILL; restarting it" in workers["b"].text()

    backend = daemon.wait_state("failed", timeout=15)
    assert backend["error"].startswith(f"RPC worker b ({workers['b'].address}) went away "
                                       "under tiny-rpc")
    assert owned_backends(rpc_home.runtime) == []
    wait_workers(daemon, {"a": "up", "b": "up"})
    # no restart loop: the failed backend stays failed until someone switches
    assert daemon.backend()["state"] == "failed" and owned_backends(rpc_home.runtime) == []
    r = daemon.cli("switch", "tiny-rpc")
    assert r.returncode == 0, r.stderr
    assert chat(daemon)


def test_a_stopped_worker_is_shown_down_and_a_switch_needing_it_fails_fast(
        workers: dict[str, RpcWorker], rpc_home: Home, make_daemon: Callable[..., Daemon],
) -> None:
    rpc_home.write_config(daemon={"default_model": "tiny-b"})
    daemon = make_daemon()
    wait_workers(daemon, {"a": "up", "b": "up"})
    b = workers["b"]
    assert b.stop() == 0
    assert b.rpc_server() is None
    wait_workers(daemon, {"a": "up", "b": "down"}, timeout=2 * CHECK + 2)
    down = next(w for w in daemon.status()["workers"] if w["name"] == "b")
    assert down["up"] is False and "connection refused" in down["error"]

    r = daemon.cli("switch", "tiny-rpc")
    assert r.returncode == 8, r.stdout + r.stderr
    assert f"tiny-rpc needs RPC worker b ({b.address}), which is down: connection refused" \
        in r.stderr
    assert "start it (`llmctl worker` on that host)" in r.stderr
    assert not (rpc_home.runtime / "logs" / "tiny-rpc.log").exists()  # nothing was spawned

    models = json.loads(daemon.cli("models", "--json").stdout)["models"]
    entry = next(m for m in models if m["id"] == "tiny-rpc")
    assert entry["available"] is False and f"RPC worker b ({b.address})" in entry["error"]
    assert entry["workers"] == ["a", "b"]
    assert " !  tiny-rpc" in daemon.cli("models").stdout
    assert "DOWN since" in daemon.cli("status").stdout

    # the default model needs b too: the first request's load is refused by the lifecycle
    # worker itself, at once, with the reason (not a 10-minute load timeout)
    r = daemon.post("/v1/chat/completions", json=CHAT, timeout=20)
    assert r.status_code == 503, r.text
    assert f"tiny-b needs RPC worker b ({b.address}), which is down" in r.text
    assert owned_backends(rpc_home.runtime) == []

    b.start()
    wait_workers(daemon, {"a": "up", "b": "up"}, timeout=2 * CHECK + 5)
    assert daemon.cli("switch", "tiny-rpc").returncode == 0
    assert chat(daemon)


def test_llmctl_worker_refuses_an_open_address(home: Home, ports: Ports) -> None:
    port = ports.take()
    r = subprocess.run([str(ROOT / "bin" / "llmctl"), "worker", "--host", "0.0.0.0", "--port",
                        str(port)], env=home.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0: rpc-server has no authentication" in r.stderr
    assert "ssh -N -L" in r.stderr and "--allow-network" in r.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_llmctl_worker_gives_up_with_the_reason_after_repeated_failed_starts(
        home: Home, ports: Ports, tmp_path: Path) -> None:
    port = ports.take()
    with socket.create_server(("127.0.0.1", port)):  # someone else holds the port
        worker = RpcWorker(home, "taken", port, tmp_path).start(wait=False)
        assert worker.proc is not None
        assert worker.proc.wait(30) == 1
    text = worker.text()
    assert (f"rpc-server keeps failing before it is ready (it could not listen on "
            f"127.0.0.1:{port}: the port is in use") in text
    assert "3 times in a row); giving up" in text
    assert worker.log.read_text().count("starting rpc-server:") == 3


def test_llmctl_worker_forwards_a_stop_and_leaves_no_orphan(home: Home, ports: Ports,
                                                            tmp_path: Path) -> None:
    worker = RpcWorker(home, "orphan-check", ports.take(), tmp_path).start()
    assert worker.proc is not None
    title = " ".join(psutil.Process(worker.proc.pid).cmdline())
    assert title.startswith("llmctl worker: orphan-check")
    child = worker.rpc_server()
    assert child is not None and os.getpgid(child.pid) == child.pid  # its own group
    os.kill(worker.proc.pid, signal.SIGKILL)  # no chance to clean up: the kernel does it
    worker.proc.wait(10)
    wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 10,
             "the rpc-server to die with its supervisor")

    worker.start()
    child = worker.rpc_server()
    assert child is not None and worker.proc is not None
    worker.proc.send_signal(signal.SIGHUP)  # restart the rpc-server (after an upgrade)
    wait_for(lambda: (now := worker.rpc_server()) is not None and now.pid != child.pid, 10,
             "the rpc-server to be restarted on SIGHUP", worker.stderr)
    worker.wait_ready(count=3)
    assert "received SIGHUP: restarting rpc-server" in worker.text()
    assert "giving up" not in worker.text() and worker.proc.poll() is None
    child = worker.rpc_server()
    assert child is not None
    assert worker.stop() == 0
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert "received SIGTERM: stopping rpc-server" in worker.text()
