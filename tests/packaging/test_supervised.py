"""llmctld under real supervisors: runit's runsv, s6's s6-svscan/s6-supervise and OpenRC's
supervise-daemon.

Each test installs the service definition from contrib/ into a temp dir, with a settings file
that points it at this checkout and a temp LLMCTL_HOME, then checks what a user relies on: the
service starts llmctld, /health answers, a switch works, a SIGKILLed llmctld is restarted (and
leaves no orphan behind), and stopping the service stops llmctld *and* its llama-server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from servicekit import CONTRIB, ServiceEnv, alive, process_tree, require_tool, run

STOP_TIMEOUT = 45


def exercise(
    env: ServiceEnv, main_pid: Callable[[], int | None], stop: Callable[[], None], log: Path
) -> None:
    """The scenario every supervisor must pass. ``main_pid`` asks the supervisor (or llmctld's
    pidfile) for llmctld's pid; ``log`` is where the service keeps llmctld's output."""
    env.wait(env.healthy, "llmctld to answer /health")
    first = env.wait(main_pid, "the supervisor to report llmctld's pid")
    assert psutil.Process(first).name() not in ("sh", "dash", "bash"), "llmctld must be exec'd"

    env.switch()
    env.wait(lambda: log.exists() and log.stat().st_size > 0, f"llmctld's output in {log}")

    # A SIGKILLed llmctld gets no chance to clean up: the supervisor restarts it, and the new
    # one must be the only llmctld (the old workers gone), with at most one llama-server.
    backends = env.llama_servers()
    old_workers = [p for p in process_tree(first) if p not in backends]
    os.kill(first, signal.SIGKILL)
    second = env.wait(
        lambda: (pid := main_pid()) is not None and pid != first and pid,
        "the supervisor to restart llmctld",
    )
    env.wait(env.healthy, "the restarted llmctld to answer /health")
    env.wait_until_gone(old_workers, "the killed llmctld's workers to exit", timeout=20)
    env.switch()
    env.wait(lambda: len(env.llama_servers()) == 1, "a single llama-server")

    tree = process_tree(second) + env.llama_servers()
    stop()
    env.wait_until_gone(tree, "llmctld and its llama-server to exit", timeout=STOP_TIMEOUT)
    assert not env.healthy()
    assert env.llama_servers() == []


def install_service(src: Path, dest: Path, env: ServiceEnv) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    (dest / "conf").write_text(env.settings())
    return dest


def start_supervisor(argv: list[str], env: ServiceEnv) -> subprocess.Popen:
    with open(env.root.parent / "supervisor.log", "wb") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env.home.env,
            start_new_session=True,
        )


def end_supervisor(proc: subprocess.Popen, ask_to_exit: Callable[[], object]) -> None:
    ask_to_exit()
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# runit ------------------------------------------------------------------------------------------


@pytest.fixture
def runit_service(service_env: ServiceEnv) -> Iterator[Path]:
    for tool in ("runsv", "sv", "svlogd", "chpst"):
        require_tool(tool)
    svdir = install_service(
        CONTRIB / "runit" / "llmctld", service_env.root.parent / "sv" / "llmctld", service_env
    )
    proc = start_supervisor(["runsv", str(svdir)], service_env)
    yield svdir
    end_supervisor(proc, lambda: run("sv", "exit", str(svdir), timeout=STOP_TIMEOUT + 5))


def runsv_pid(svdir: Path) -> int | None:
    """llmctld's pid as runsv records it (supervise/pid is empty while the service is down)."""
    try:
        text = (svdir / "supervise" / "pid").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


@pytest.mark.parametrize("backend", ["fake", pytest.param("real", marks=pytest.mark.real_backend)])
def test_runit_supervises_llmctld(service_env: ServiceEnv, runit_service: Path) -> None:
    def stop() -> None:
        result = run(
            "sv", "-w", str(STOP_TIMEOUT), "down", str(runit_service), timeout=STOP_TIMEOUT + 5
        )
        assert result.returncode == 0, f"sv down: {result.stdout}{result.stderr}"

    exercise(service_env, lambda: runsv_pid(runit_service), stop, service_env.log_dir / "current")
    assert run("sv", "status", str(runit_service)).stdout.startswith("down:")


# s6 ---------------------------------------------------------------------------------------------


@pytest.fixture
def s6_service(service_env: ServiceEnv) -> Iterator[Path]:
    for tool in ("s6-svscan", "s6-supervise", "s6-svc", "s6-svstat", "s6-log", "s6-setuidgid"):
        require_tool(tool)
    scandir = service_env.root.parent / "scan"
    svdir = install_service(CONTRIB / "s6" / "llmctld", scandir / "llmctld", service_env)
    proc = start_supervisor(["s6-svscan", str(scandir)], service_env)
    yield svdir
    end_supervisor(proc, lambda: run("s6-svscanctl", "-t", str(scandir)))


def s6_pid(svdir: Path) -> int | None:
    result = run("s6-svstat", "-p", str(svdir))
    pid = result.stdout.strip()
    return int(pid) if result.returncode == 0 and pid not in ("", "-1", "0") else None


def test_s6_supervises_llmctld(service_env: ServiceEnv, s6_service: Path) -> None:
    def stop() -> None:
        timeout_ms = str(STOP_TIMEOUT * 1000)
        result = run(
            "s6-svc", "-wD", "-T", timeout_ms, "-d", str(s6_service), timeout=STOP_TIMEOUT + 5
        )
        assert result.returncode == 0, f"s6-svc -d: {result.stdout}{result.stderr}"

    exercise(service_env, lambda: s6_pid(s6_service), stop, service_env.log_dir / "current")
    # finish recorded the SIGKILL in the log.
    assert "llmctld was killed by signal 9" in (service_env.log_dir / "current").read_text()


# OpenRC -----------------------------------------------------------------------------------------


@pytest.fixture
def openrc_service(
    service_env: ServiceEnv,
) -> Iterator[Callable[[str], subprocess.CompletedProcess]]:
    """contrib/openrc/llmctld as an init script under a test name, with its conf.d beside it
    (openrc-run reads ../conf.d/<name> next to the script). OpenRC only runs services on a system
    it booted; a test machine is marked as one for the duration of the test."""
    openrc_run = require_tool("openrc-run")
    require_tool("supervise-daemon")
    if os.geteuid() != 0:
        pytest.fail("OpenRC keeps its service state in /run/openrc: run this test as root")
    name = "llmctld-pkgtest"
    script = service_env.root.parent / "init.d" / name
    script.parent.mkdir()
    shutil.copy(CONTRIB / "openrc" / "llmctld", script)
    (service_env.root.parent / "conf.d").mkdir()
    (service_env.root.parent / "conf.d" / name).write_text(service_env.settings())
    softlevel = Path("/run/openrc/softlevel")
    booted = softlevel.exists()
    if not booted:
        softlevel.parent.mkdir(parents=True, exist_ok=True)
        softlevel.touch()

    def verb(action: str) -> subprocess.CompletedProcess:
        return run(
            openrc_run, str(script), action, env=service_env.home.env, timeout=STOP_TIMEOUT + 15
        )

    yield verb
    verb("stop")
    verb("zap")
    if not booted:
        softlevel.unlink()


def pidfile_pid(env: ServiceEnv) -> int | None:
    """llmctld's own pidfile, once it names a live process."""
    try:
        pid = int(env.pidfile.read_text().split()[0])
        return pid if alive(psutil.Process(pid)) else None
    except (FileNotFoundError, IndexError, ValueError, psutil.NoSuchProcess):
        return None


def test_openrc_supervises_llmctld(service_env: ServiceEnv, openrc_service) -> None:
    started = openrc_service("start")
    assert started.returncode == 0, started.stdout + started.stderr
    env = service_env
    env.wait(env.healthy, "llmctld to answer /health")
    assert openrc_service("reload").returncode == 0
    env.wait(lambda: "SIGHUP" in (env.log_dir / "llmctld.log").read_text(), "the reload in the log")

    def stop() -> None:
        result = openrc_service("stop")
        assert result.returncode == 0, result.stdout + result.stderr

    exercise(env, lambda: pidfile_pid(env), stop, env.log_dir / "llmctld.log")
    assert openrc_service("status").returncode == 3
