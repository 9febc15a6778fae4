"""llama-server's own router mode as a peer: `llama-server --models-dir DIR --models-max 1`,
the same binary, started with the flags llmctld passes its llama-server (the router forwards
its own flags to the child it spawns per model), with LLAMA_CACHE pointed at an empty directory
so it lists only the bench's models.

Every figure of the router is taken against its own child (a llama-server it spawned on a port
of its choosing, found as its child process), just as llmctld's are against the llama-server
llmctld runs. Requests to the router must name the model (its file stem).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from bench.loadgen import Conn, chat_body, median, summary_ms
from bench.stack import Reaper, http_status, poll_ready, wait_for

# flags of llmctl's argv that name one model or one address; the router gets its own
PER_SERVER = {"-m", "--model", "--host", "--port", "--alias", "-a"}


def router_flags(argv: list[str]) -> list[str]:
    """llmctl's llama-server argv without the binary and the per-server flags."""
    out, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg in PER_SERVER:
            skip = True
            continue
        out.append(arg)
    return out


class Router:
    def __init__(self, work: Path, binary: Path, ggufs: dict[str, Path], flags: list[str],
                 port: int, reaper: Reaper):
        self.work, self.binary, self.flags, self.port, self.reaper = \
            work, binary, flags, port, reaper
        self.models_dir = work / "models"
        self.cache = work / "empty-cache"
        self.proc: subprocess.Popen[bytes] | None = None
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        for name, path in ggufs.items():  # the router names models by file stem
            link = self.models_dir / f"{name}.gguf"
            if not link.exists():
                link.symlink_to(path)

    @property
    def argv(self) -> list[str]:
        return [str(self.binary), "--models-dir", str(self.models_dir), "--models-max", "1",
                "--host", "127.0.0.1", "--port", str(self.port), *self.flags]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_ARG_", "LLMCTL_"))}
        env["LLAMA_CACHE"] = str(self.cache)
        log = open(self.work / "router.log", "ab")
        self.proc = self.reaper.popen("llama-server router", self.argv, stdout=log, stderr=log,
                                      env=env)
        log.close()
        poll_ready(self.port, 30, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.reaper.stop(self.proc, signal.SIGTERM, timeout=15)
            self.proc = None

    # --- the API -------------------------------------------------------------------------

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 120) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload,
                         headers={"Content-Type": "application/json"} if payload else {})
            resp = conn.getresponse()
            data = resp.read()
            try:
                return resp.status, json.loads(data or b"{}")
            except ValueError:
                return resp.status, data.decode(errors="replace")
        finally:
            conn.close()

    def status(self, model: str) -> str | None:
        code, data = self.call("GET", "/models")
        if code != 200:
            return None
        for m in data.get("data", []):
            if m.get("id") == model:
                status = m.get("status")
                return status.get("value") if isinstance(status, dict) else status
        return None

    def load(self, model: str, timeout: float = 60) -> None:
        """Load `model` (unloading the other: --models-max 1) and wait until its child
        answers."""
        if self.status(model) != "loaded":
            code, data = self.call("POST", "/models/load", {"model": model})
            if code != 200:
                raise RuntimeError(f"router /models/load {model}: HTTP {code} {data}")
            self.wait_status(model, "loaded", timeout)
        wait_for(lambda: self.child_port() is not None, timeout, f"router child for {model}")

    def wait_status(self, model: str, value: str, timeout: float, every: float = 0.005,
                    ) -> float:
        deadline = time.perf_counter() + timeout
        while True:
            if self.status(model) == value:
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"router: {model} not {value} within {timeout}s")
            time.sleep(every)

    # --- the child -------------------------------------------------------------------------

    def children(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.proc.pid).children()
        return []

    def child_argv(self) -> list[str] | None:
        for child in self.children():
            with contextlib.suppress(psutil.Error):
                return child.cmdline()
        return None

    def child_port(self) -> int | None:
        argv = self.child_argv()
        if not argv or "--port" not in argv:
            return None
        port = int(argv[argv.index("--port") + 1])
        return port if http_status(port) == 200 else None

    def pids(self) -> dict[str, int]:
        return {"router": self.proc.pid} if self.proc is not None else {}


# --- switch A -> B ------------------------------------------------------------------------------


def _bare(reaper: Reaper, work: Path, argv: list[str], port: int, body: bytes | None = None,
          ) -> tuple[float, float]:
    """The router child's own argv spawned by itself (on `port`): seconds to /health 200 (or,
    given a body, to the answer to that request on a fresh connection), and seconds from
    SIGTERM to its exit."""
    argv = list(argv)
    argv[argv.index("--port") + 1] = str(port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_ARG_", "LLMCTL_"))}
    with open(work / "router-bare-child.log", "ab") as log:
        t0 = time.perf_counter()
        proc = reaper.popen("llama-server (bare router child)", argv, stdout=log, stderr=log,
                            env=env)
    try:
        ready = poll_ready(port, 60, proc=proc) - t0
        if body is not None:
            conn = Conn(port)
            conn.chat(body)
            conn.close()
            ready = time.perf_counter() - t0
    finally:
        stop = reaper.stop(proc, timeout=15)
    return ready, stop if stop is not None else float("nan")


def switch(router: Router, models: tuple[str, str], n: int, bare_port: int, reaper: Reaper,
           work: Path) -> dict[str, Any]:
    """A -> B through the router, two ways, against its child's argv spawned bare:
    `request`: a chat request naming B (the router unloads A, loads B, answers), timed to
    the answer, against bare stop + spawn + the same request; `api`: POST /models/unload,
    wait until /models says unloaded, POST /models/load, timed until /models says loaded
    (polled every 5 ms), against bare stop + spawn to /health 200."""
    rows: dict[str, list[float]] = {k: [] for k in (
        "bare_ready", "bare_stop", "bare_first_request", "request", "api")}
    a, b = models
    body = {m: chat_body(4, False, model=m) for m in models}
    argv: dict[str, list[str]] = {}
    for m in (b, a):  # each model's child argv, as the router builds it; A loaded at the end
        router.load(m)
        child = router.child_argv()
        assert child is not None
        argv[m] = child
    for _ in range(n):
        # the bare baseline: B's child argv by itself (A stays loaded in the router, idle)
        ready, stop = _bare(reaper, work, argv[b], bare_port)
        rows["bare_ready"].append(ready)
        rows["bare_stop"].append(stop)
        rows["bare_first_request"].append(_bare(reaper, work, argv[b], bare_port, body[b])[0])
        # A -> B through the router, by a request naming B
        conn = Conn(router.port, timeout=120)
        t0 = time.perf_counter()
        conn.chat(body[b])
        rows["request"].append(time.perf_counter() - t0)
        conn.close()
        # B -> A by the explicit API (the two models are the same size): unload B, wait
        # until it is (a load before that is refused: "model limit reached"), load A
        t0 = time.perf_counter()
        code, data = router.call("POST", "/models/unload", {"model": b})
        if code != 200:
            raise RuntimeError(f"router /models/unload {b}: HTTP {code} {data}")
        router.wait_status(b, "unloaded", 60)
        code, data = router.call("POST", "/models/load", {"model": a})
        if code != 200:
            raise RuntimeError(f"router /models/load {a}: HTTP {code} {data}")
        rows["api"].append(router.wait_status(a, "loaded", 60) - t0)
    ready, stop = median(rows["bare_ready"]) * 1000, median(rows["bare_stop"]) * 1000
    first = median(rows["bare_first_request"]) * 1000
    out: dict[str, Any] = {k: summary_ms(v) for k, v in rows.items()}
    out["overhead_ms"] = {
        "request": median(rows["request"]) * 1000 - first - stop,
        "api": median(rows["api"]) * 1000 - ready - stop,
    }
    out["child_argv"] = argv[a]
    return out
