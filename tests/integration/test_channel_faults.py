"""The supervisor's defences with real processes: a worker that writes garbage into its
channel, one that stops reading it, one that fails at boot every time (faults injected with
LLMCTL_TEST_FAULT, see docs/architecture.md), and a reload that rebuilds the Host/Origin guard
without a proxy restart."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from harness import Daemon, Home, owned_backends, wait_for


def inject(home: Home, fault: str, tmp_path: Path, once: bool = True) -> None:
    home.extra_env["LLMCTL_TEST_FAULT"] = fault
    if once:  # the restarted worker is healthy
        home.extra_env["LLMCTL_TEST_FAULT_ONCE"] = str(tmp_path / "fault-fired")


def restarted_lifecycle_serves(daemon: Daemon, first_pid: int) -> None:
    wait_for(lambda: daemon.workers().get("lifecycle") not in (None, first_pid), 20,
             "a new lifecycle worker", daemon.log)
    r = daemon.switch("m")
    assert r.status_code == 200, r.text
    assert daemon.backend()["state"] == "ready"
    assert len(owned_backends(daemon.home.runtime)) == 1
    assert daemon.proc is not None and daemon.proc.poll() is None  # the supervisor survived


def test_worker_writing_garbage_is_restarted(fake_home: Home, make_daemon,
                                             tmp_path: Path) -> None:
    fake_home.add_model("m")
    inject(fake_home, "lifecycle-garbage", tmp_path)
    daemon = make_daemon()
    wait_for(lambda: "undecodable frame" in daemon.log.read_text(), 20,
             "the supervisor to notice the garbage", daemon.log)
    log = daemon.log.read_text()
    assert "lifecycle worker" in log and "restarting it" in log
    first = int(log.split("started lifecycle worker (pid ")[1].split(")")[0])
    restarted_lifecycle_serves(daemon, first)


def test_worker_that_stops_reading_is_restarted(fake_home: Home, make_daemon,
                                                tmp_path: Path) -> None:
    fake_home.add_model("m")
    inject(fake_home, "lifecycle-deaf", tmp_path)
    fake_home.extra_env["LLMCTL_TEST_CHANNEL_SNDBUF"] = "1"  # the kernel's minimum
    daemon = make_daemon()
    first = wait_for(lambda: daemon.workers().get("lifecycle"), 10, "the lifecycle worker")
    wait_for(lambda: (tmp_path / "fault-fired").exists(), 20, "the worker to go deaf")

    def noticed() -> bool:
        # every reload sends the lifecycle worker a message it never reads
        assert daemon.post("/reload", timeout=30).status_code == 200
        return "not reading its channel" in daemon.log.read_text()

    wait_for(noticed, 60, "the supervisor to notice the deaf worker", daemon.log)
    assert "restarting it" in daemon.log.read_text()
    restarted_lifecycle_serves(daemon, first)


def test_worker_failing_at_every_boot_ends_llmctld_with_its_error(fake_home: Home,
                                                                   make_daemon,
                                                                   tmp_path: Path) -> None:
    inject(fake_home, "lifecycle-boot", tmp_path, once=False)
    daemon = make_daemon(wait=False)
    assert daemon.proc is not None
    try:
        code = daemon.proc.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError(daemon.log.read_text()[-3000:]) from None
    log = daemon.log.read_text()
    assert code == 1, log[-3000:]
    assert log.count("RuntimeError: injected boot failure") >= 3  # tracebacks + the verdict
    assert "keeps failing before it is ready (RuntimeError: injected boot failure" in log
    assert "giving up" in log


def test_reload_applies_allowed_origins_without_a_proxy_restart(fake_home: Home,
                                                               make_daemon) -> None:
    daemon = make_daemon()
    proxy = daemon.workers()["proxy"]
    origin = {"Origin": "https://app.example"}
    assert daemon.post("/stop", headers=origin).status_code == 403
    fake_home.write_config(daemon={"allowed_origins": ["https://app.example"]})
    r = daemon.cli("reload")
    assert r.returncode == 0, r.stderr
    assert daemon.post("/stop", headers=origin).status_code == 200
    fake_home.write_config(daemon={"allowed_origins": []})
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)  # SIGHUP re-reads it too
    wait_for(lambda: daemon.post("/stop", headers=origin).status_code == 403, 10,
             "SIGHUP to drop the origin again", daemon.log)
    assert daemon.workers()["proxy"] == proxy  # never restarted
