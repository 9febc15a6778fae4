"""Helpers for the packaging tests, on top of tests/support/harness.py.

The supervision tests run the real service definitions from contrib/, copied into a temp dir
with a settings file that points them at this checkout's ``bin/llmctld`` (or
$LLMCTL_TEST_LLMCTLD) and at a temporary home from the harness. Waits poll with a deadline; a
failure says what was still running and shows the service's log.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from harness import ROOT, Home, owned_backends, wait_for

REPO = ROOT
CONTRIB = REPO / "contrib"
MODEL_ID = "tiny-a"


def require_tool(name: str) -> str:
    """The path of a command a test needs; a missing one fails the test (CI installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; see tests/packaging/README.md for the packages")
    return path


def run(*argv: str, timeout: float = 60.0, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (llama-server too: its own session, same parent)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def describe(procs: list[psutil.Process]) -> str:
    lines = []
    for p in procs:
        try:
            lines.append(f"  {p.pid} {p.status()} {' '.join(p.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return "\n".join(lines) or "  (none)"


def service_account() -> tuple[str, str]:
    """(user, group) the services switch to: ourselves when root, so that the privilege-drop
    path (chpst -u, s6-setuidgid, start-stop-daemon --chuid) runs; none otherwise (it would fail)."""
    if os.geteuid() != 0:
        return "", ""
    return pwd.getpwuid(0).pw_name, grp.getgrgid(0).gr_name


@dataclass
class ServiceEnv:
    """A harness Home with one model, served by llmctld under a service definition."""

    home: Home
    llmctld: Path
    daemon_port: int
    log_dir: Path

    @property
    def root(self) -> Path:
        return self.home.root

    @property
    def runtime(self) -> Path:
        return self.home.runtime

    @property
    def pidfile(self) -> Path:
        return self.runtime / "llmctld.pid"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon_port}"

    def settings(self, **extra: str) -> str:
        """The shell settings file every contrib script reads (conf, /etc/default/llmctld)."""
        user, group = service_account()
        values = {
            "LLMCTLD": str(self.llmctld),
            "LLMCTL_USER": user,
            "LLMCTL_GROUP": group,
            "LLMCTL_HOME": str(self.root),
            "LLMCTL_RUNTIME_HOME": str(self.runtime),
            "LLMCTL_LOG_DIR": str(self.log_dir),
            **extra,
        }
        lines = [f"{k}='{v}'\n" for k, v in values.items()]
        # The interpreter running the tests first, so that bin/llmctld finds its packages; the
        # rest of PATH is the service manager's (OpenRC's holds its own helpers).
        lines.append(f'PATH="{Path(sys.executable).parent}:$PATH"\n')
        # As a user passes any other environment: exported from the settings file.
        lines.append(f"export LLMCTL_PORT={self.daemon_port}\n")
        return "".join(lines)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=60, **kw)

    def healthy(self) -> bool:
        try:
            return requests.get(self.url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def llama_servers(self) -> list[psutil.Process]:
        return [p for p in owned_backends(self.runtime) if alive(p)]

    def log_text(self) -> str:
        files = [*sorted(self.log_dir.glob("*")), *sorted((self.runtime / "logs").glob("*"))]
        parts = [f"--- {f}\n{f.read_text(errors='replace')[-4000:]}" for f in files if f.is_file()]
        return "\n".join(parts) or "(no logs)"

    def wait(self, condition, what: str, timeout: float = 20.0) -> Any:
        try:
            return wait_for(condition, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log_text()}") from None

    def wait_until_gone(self, procs: list[psutil.Process], what: str, timeout: float) -> None:
        try:
            wait_for(lambda: not any(alive(p) for p in procs), timeout, what)
        except AssertionError as e:
            still = describe([p for p in procs if alive(p)])
            raise AssertionError(f"{e}\nstill running:\n{still}\n{self.log_text()}") from None

    def switch(self, model: str = MODEL_ID) -> None:
        response = self.post(f"/switch/{model}")
        assert response.status_code == 200, (
            f"switch to {model}: HTTP {response.status_code} {response.text}\n{self.log_text()}"
        )
        self.wait(self.llama_servers, "the llama-server of the switched model")
