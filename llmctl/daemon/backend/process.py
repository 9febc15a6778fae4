"""One llama-server process: spawned by us, or adopted from a previous worker or daemon.

The process runs in its own session (so a Ctrl-C in llmctld's terminal never reaches it, and
it outlives a crashed worker until someone adopts or cleans it up) and writes straight to its
log file (no pipe that could break when a worker dies).

Identity is pid + create time + cmdline: a pid alone could have been reused by now.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

OWNER_ENV = "LLMCTL_BACKEND_OF"  # marks our children: value is the runtime dir
SECOND_SIGNAL_AFTER = 1.0  # seconds after the first SIGTERM (see Termination)

log = logging.getLogger("llmctld.lifecycle")


class BackendProcess:
    def __init__(self, pid: int, create_time: float, cmdline: list[str],
                 popen: subprocess.Popen[bytes] | None = None):
        self.pid = pid
        self.create_time = create_time
        self.cmdline = cmdline
        self._popen = popen
        self._exit_code: int | None = None
        self._gone = False

    # --- creation ---------------------------------------------------------------------------

    @classmethod
    def spawn(cls, argv: list[str], log_path: Path, env: dict[str, str]) -> BackendProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab", buffering=0) as log:
            os.fchmod(log.fileno(), 0o600)
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     env=env, start_new_session=True, close_fds=True)
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = 0.0  # already gone; exit_status() will say so
        return cls(popen.pid, create_time, list(argv), popen)

    @classmethod
    def adopt(cls, record: dict[str, Any]) -> BackendProcess | None:
        """The process a state.json record names, if it is still that very process."""
        pid, created, cmdline = record.get("pid"), record.get("create_time"), record.get("cmdline")
        if not isinstance(pid, int) or not isinstance(created, int | float) or not cmdline:
            return None
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) > 0.01 or not _same_command(proc.cmdline(),
                                                                                cmdline):
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return cls(pid, created, list(cmdline))

    # --- watching ---------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time, "cmdline": self.cmdline}

    def exit_status(self) -> int | None:
        """None while running; the exit code (negative: killed by that signal) once it ended;
        for an adopted process whose status we cannot collect, -255."""
        if self._gone:
            return self._exit_code
        if self._popen is not None:
            code = self._popen.poll()
            if code is None:
                return None
            self._gone, self._exit_code = True, code
            return code
        try:
            proc = psutil.Process(self.pid)
            alive = (abs(proc.create_time() - self.create_time) < 0.01
                     and (proc.status() != psutil.STATUS_ZOMBIE or _threads_left(self.pid)))
        except psutil.Error:
            alive = False
        if alive:
            return None
        self._gone, self._exit_code = True, -255
        return self._exit_code

    def read_chars(self) -> int | None:
        try:
            return psutil.Process(self.pid).io_counters().read_chars
        except (psutil.Error, AttributeError):
            return None

    # --- stopping ---------------------------------------------------------------------------

    def terminate(self, grace: float, kill_wait: float = 5.0) -> int | None:
        """Stop the process and wait for it (see Termination for the signals). Returns the
        exit status (None only if even SIGKILL did not end it within kill_wait). Blocking:
        for boot-time clean-up; the lifecycle loop steps a Termination instead."""
        stopping = Termination(self, grace, kill_wait)
        delay = 0.005
        while not stopping.step():
            time.sleep(delay)  # polling a process we do not own has no blocking alternative
            delay = min(delay * 2, 0.05)
        return stopping.exit_code

    def _signal(self, sig: int) -> None:
        try:
            if os.getpgid(self.pid) == self.pid:  # its own group, as we started it
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

class Termination:
    """Stopping one process without blocking: `step()` sends the signals as their time
    comes and says when it is over. SIGTERM to the process group at once; if it is still
    there after SECOND_SIGNAL_AFTER, a second SIGTERM; SIGKILL once `grace` is over; given up
    `kill_wait` after that (exit_code stays None).

    The second signal is for llama-server, which exits in milliseconds on SIGTERM but now
    and then hangs instead (seen when a stream's client disconnects just before the signal:
    the slot is never released) and exits at once on a second signal."""

    def __init__(self, proc: BackendProcess, grace: float, kill_wait: float = 5.0):
        self.proc, self.grace = proc, grace
        now = time.monotonic()
        self.second_at = now + SECOND_SIGNAL_AFTER if grace > SECOND_SIGNAL_AFTER else None
        self.kill_at = now + grace
        self.give_up_at = self.kill_at + kill_wait
        self.killed = False
        self.exit_code: int | None = proc.exit_status()
        self.done = self.exit_code is not None
        if not self.done:
            proc._signal(signal.SIGTERM)

    def step(self) -> bool:
        """True once the process is gone or given up on."""
        if self.done:
            return True
        code = self.proc.exit_status()
        if code is not None:
            self.exit_code, self.done = code, True
            return True
        now = time.monotonic()
        if self.second_at is not None and now >= self.second_at:
            self.second_at = None
            log.warning("llama-server (pid %d) still running %.1fs after SIGTERM: sending a "
                        "second one", self.proc.pid, SECOND_SIGNAL_AFTER)
            self.proc._signal(signal.SIGTERM)
        if not self.killed and now >= self.kill_at:
            self.killed = True
            log.warning("llama-server (pid %d) did not stop within %.1fs: SIGKILL",
                        self.proc.pid, self.grace)
            self.proc._signal(signal.SIGKILL)
        if now >= self.give_up_at:
            self.done = True
        return self.done


def _threads_left(pid: int) -> bool:
    """Whether a process whose main thread is a zombie still has other threads. A process
    that exits is "zombie" as soon as its main thread is done, while its other threads may
    still be exiting and its files (the listening socket) still open; a multi-threaded
    llama-server on a loaded machine stays in that state long enough for a launch on its
    port to find the port taken. Only a parent's wait sees the whole group end, and we are
    not the parent of what we adopt."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def _same_command(actual: list[str], recorded: list[str]) -> bool:
    """The argv we started, possibly behind an interpreter (a `#!` script runs as
    `python3 script.py ...`)."""
    return len(actual) >= len(recorded) and actual[len(actual) - len(recorded):] == recorded


def health(host: str, port: int, timeout: float = 1.0) -> int | None:
    """HTTP status of GET /health, or None when nothing answers (or not in HTTP). On a plain
    socket: this is all the lifecycle worker speaks HTTP for, and http.client would bring the
    email package and ssl into a process that lives as long as the daemon (~1.5 MB)."""
    import socket

    request = f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    head = b""
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout) as sock:
            sock.sendall(request.encode())
            while b"\r\n" not in head and len(head) < 4096:
                data = sock.recv(4096)
                if not data:
                    break
                head += data
    except OSError:
        return None
    parts = head.split(b"\r\n", 1)[0].split(None, 2)  # HTTP/1.1 200 OK
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def await_health(host: str, port: int, alive: Callable[[], bool], patience: float) -> str:
    """Whether an adopted llama-server still serves, asked patiently: a busy one on a loaded
    machine can take seconds to answer /health, and one missed 1-second probe once got a
    healthy backend killed after a daemon restart. Probes /health with a growing timeout
    (1 s, doubling to 4 s) and a growing pause between probes (0.1 s, doubling to 1 s) for
    at most `patience` seconds. Returns

    - "healthy": /health answered 200;
    - "listening": no 200 within `patience`, but the process is alive and still accepts
      connections on its port (busy, not gone: adoptable);
    - "gone": the process exited meanwhile;
    - "deaf": nothing accepts connections on its port (a llama-server that is ready always
      listens there, so waiting longer changes nothing).
    """
    deadline = time.monotonic() + patience
    timeout, pause = 1.0, 0.1
    while True:
        if not alive():
            return "gone"
        left = deadline - time.monotonic()
        if health(host, port, timeout=max(0.05, min(timeout, left))) == 200:
            return "healthy"
        if not port_in_use(host, port):
            return "gone" if not alive() else "deaf"
        left = deadline - time.monotonic()
        if left <= 0:
            return "listening" if alive() else "gone"
        time.sleep(min(pause, left))  # a blocking boot step: nothing else runs meanwhile
        timeout, pause = min(timeout * 2, 4.0), min(pause * 2, 1.0)


def port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.settimeout(0.5)
        return s.connect_ex((host.strip("[]"), port)) == 0


def find_owned_orphans(runtime: Path, exclude: set[int]) -> list[psutil.Process]:
    """llama-servers that an llmctld using this runtime dir started and lost track of (found by
    the marker we put in their environment, so a user's own llama-server is never touched).
    Only session leaders count: we start each backend in a session of its own, and whatever
    else carries the marker is a child of one (e.g. an interpreter's launcher) and goes with
    it."""
    found = []
    uid = os.getuid()
    for proc in psutil.process_iter(["pid", "uids"]):
        if proc.info["pid"] in exclude or proc.info["uids"] is None or \
                proc.info["uids"].real != uid:
            continue
        try:
            if os.getsid(proc.pid) == proc.pid and proc.environ().get(OWNER_ENV) == str(runtime):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def stop_owned_orphans(runtime: Path, keep: set[int], grace: float) -> list[str]:
    """Stop the llama-servers of this runtime dir that no worker keeps track of (blocking, up
    to `grace` each): a worker killed between spawning one and recording it in state.json
    leaves one behind, holding the backend port. Returns notes for the daemon log."""
    notes = []
    for orphan in find_owned_orphans(runtime, keep):
        notes.append(f"stopping orphaned llama-server pid {orphan.pid}")
        try:
            stale = BackendProcess(orphan.pid, orphan.create_time(), orphan.cmdline())
        except psutil.Error:
            continue  # gone meanwhile
        stale.terminate(grace)
    return notes
