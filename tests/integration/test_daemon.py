"""The llmctld process itself: start-up checks, pid file, titles, signals, worker restarts."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import psutil
import requests

from harness import ROOT, Daemon, Home, owned_backends, wait_for


def run_daemon(home: Home, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmctl.daemon.processes.main", *args], env=home.env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_refuses_to_start_twice(fake_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    pidfile = fake_home.runtime / "llmctld.pid"
    assert pidfile.read_text().strip() == str(daemon.pid)
    r = run_daemon(fake_home, "--port", "0")
    assert r.returncode == 1
    assert f"llmctld is already running (pid {daemon.pid})" in r.stderr
    assert daemon.get("/health").status_code == 200


def test_port_in_use_is_explained(fake_home: Home) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = run_daemon(fake_home, "--port", str(taken.getsockname()[1]))
    assert r.returncode == 1 and "already in use" in r.stderr and "--port" in r.stderr


def test_broken_global_config_refuses_with_location(fake_home: Home) -> None:
    (fake_home.root / "config" / "default.yaml").write_text("daemon:\n  prot: 1\n")
    r = run_daemon(fake_home, "--port", "0")
    assert r.returncode == 1
    assert "default.yaml:2: daemon.prot: unknown key (did you mean 'port'?)" in r.stderr


def test_non_loopback_bind_needs_opt_in(fake_home: Home) -> None:
    r = run_daemon(fake_home, "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 1 and "daemon.allow_remote" in r.stderr


def test_runtime_files_are_private(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("m")
    daemon = make_daemon()
    assert daemon.switch("m").status_code == 200
    for path in (fake_home.runtime, fake_home.runtime / "state.json",
                 fake_home.runtime / "llmctld.pid", fake_home.runtime / "logs" / "m.log"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


def test_process_titles_name_roles(fake_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert "llmctld: supervisor" in " ".join(psutil.Process(daemon.pid).cmdline())
    wait_for(lambda: set(daemon.workers()) == {"proxy", "lifecycle"}, 10, "worker titles")


def test_sigint_stops_cleanly(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("m")
    daemon = make_daemon()
    assert daemon.switch("m").status_code == 200
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(30) == 0
    assert not owned_backends(fake_home.runtime)


def test_killed_proxy_worker_is_replaced_and_backend_survives(fake_home: Home,
                                                              make_daemon) -> None:
    fake_home.add_model("m")
    daemon: Daemon = make_daemon()
    assert daemon.switch("m").status_code == 200
    backend_pid = daemon.backend()["pid"]
    old_proxy = daemon.workers()["proxy"]
    os.kill(old_proxy, signal.SIGKILL)
    # the listening socket stays with the supervisor: this request waits in the backlog
    r = requests.post(daemon.url + "/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200
    new_proxy = wait_for(lambda: (p := daemon.workers().get("proxy")) != old_proxy and p, 10,
                         "a new proxy worker")
    assert new_proxy != old_proxy
    status = daemon.status()
    assert status["backend"]["pid"] == backend_pid and status["backend"]["state"] == "ready"
    assert status["daemon"]["workers"]["proxy"]["restarts"] == 1


def test_killed_lifecycle_worker_adopts_backend(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("m")
    daemon: Daemon = make_daemon()
    assert daemon.switch("m").status_code == 200
    backend_pid = daemon.backend()["pid"]
    old = daemon.workers()["lifecycle"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: daemon.workers().get("lifecycle") not in (None, old), 10,
             "a new lifecycle worker")
    wait_for(lambda: "adopted running llama-server" in daemon.log.read_text(), 10,
             "adoption", daemon.log)
    assert daemon.backend()["pid"] == backend_pid
    assert [p.pid for p in owned_backends(fake_home.runtime)] == [backend_pid]
    assert daemon.post("/stop").json() == {"stopped": "m"}
    assert not owned_backends(fake_home.runtime)


def test_restarted_daemon_adopts_backend_after_kill_9(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("m")
    first: Daemon = make_daemon()
    assert first.switch("m").status_code == 200
    backend_pid = first.backend()["pid"]
    workers = first.workers()
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait(10)
    for pid in workers.values():  # the workers notice their parent is gone and exit
        wait_for(lambda pid=pid: not psutil.pid_exists(pid) or
                 psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10, f"worker {pid} exit")
    second: Daemon = make_daemon()
    assert second.backend()["pid"] == backend_pid
    assert second.backend()["state"] == "ready"
    r = second.post("/v1/chat/completions", json={"messages": [{"role": "user",
                                                                 "content": "x"}]})
    assert r.status_code == 200


def _kill_9_daemon(daemon: Daemon) -> None:
    """SIGKILL the supervisor and wait for its workers to notice and exit (llama-server
    lives on: its own session)."""
    workers = daemon.workers()
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(10)
    for pid in workers.values():
        wait_for(lambda pid=pid: not psutil.pid_exists(pid) or
                 psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10, f"worker {pid} exit")


def test_restarted_daemon_adopts_a_backend_whose_health_is_slow(fake_home: Home, make_daemon,
                                                               tmp_path) -> None:
    """A busy llama-server misses a 1-second /health probe: adoption asks again, patiently,
    instead of killing a healthy backend (and reloading the model)."""
    stall = tmp_path / "health-stall"
    fake_home.add_model("m", script={"health_stall_file": str(stall)})
    first: Daemon = make_daemon()
    assert first.switch("m").status_code == 200
    backend_pid = first.backend()["pid"]
    _kill_9_daemon(first)
    stall.write_text(str(time.time() + 3.5))  # every /health answers only 3.5 s from now
    second: Daemon = make_daemon()
    wait_for(lambda: "adopted running llama-server" in second.log.read_text() or
             "not healthy" in second.log.read_text(), 30, "the adoption's verdict", second.log)
    assert "adopted running llama-server for m" in second.log.read_text()
    assert second.backend()["pid"] == backend_pid
    assert second.backend()["state"] == "ready"
    assert [p.pid for p in owned_backends(fake_home.runtime)] == [backend_pid]


def test_a_listening_backend_is_adopted_even_when_health_never_answers(
        fake_home: Home, make_daemon, tmp_path) -> None:
    """Past server.adoptTimeoutMs a live llama-server of ours that still accepts connections
    on its port is adopted as busy (the log says so), not killed."""
    stall = tmp_path / "health-stall"
    fake_home.write_config(server={"adoptTimeoutMs": 1500})
    fake_home.add_model("m", script={"health_stall_file": str(stall)})
    first: Daemon = make_daemon()
    assert first.switch("m").status_code == 200
    backend_pid = first.backend()["pid"]
    _kill_9_daemon(first)
    stall.write_text(str(time.time() + 600))  # /health does not answer during this test
    second: Daemon = make_daemon()
    wait_for(lambda: "adopted running llama-server" in second.log.read_text() or
             "not healthy" in second.log.read_text(), 30, "the adoption's verdict", second.log)
    text = second.log.read_text()
    assert "still listens on its port: adopted as busy" in text, text
    assert second.backend()["pid"] == backend_pid
    stall.unlink()  # the busy spell is over: it serves
    r = second.post("/v1/chat/completions", json={"messages": [{"role": "user",
                                                                 "content": "x"}]})
    assert r.status_code == 200


def test_restart_proxy_route_and_usr2(fake_home: Home, make_daemon) -> None:
    daemon: Daemon = make_daemon()
    old = daemon.workers()["proxy"]
    assert daemon.post("/restart-proxy").status_code == 202
    middle = wait_for(lambda: (p := daemon.workers().get("proxy")) not in (None, old) and p,
                      10, "a new proxy worker")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: daemon.workers().get("proxy") not in (None, old, middle), 10,
             "another proxy worker")
    assert daemon.get("/health").status_code == 200
