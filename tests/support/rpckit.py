"""`llmctl worker` processes for tests: each stands in for a machine that lends its devices
over llama.cpp RPC. Always on loopback, on a port from the harness's picker; stderr goes to a
file that failing waits print. Stop the llmctld using them first: llama-server aborts when a
worker vanishes under it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil

from harness import ROOT, Home, stop_process, wait_for


class RpcWorker:
    def __init__(self, home: Home, name: str, port: int, directory: Path):
        self.home, self.name, self.port = home, name, port
        self.stderr = directory / f"worker-{name}.err"
        self.log = directory / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *extra: str, wait: bool = True) -> RpcWorker:
        offset = self.stderr.stat().st_size if self.stderr.exists() else 0
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen(
                [str(ROOT / "bin" / "llmctl"), "worker", "--port", str(self.port), "--name",
                 self.name, "--log", str(self.log), *extra],
                env=self.home.env, stdout=subprocess.DEVNULL, stderr=err,
                stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready(offset)
        return self

    def wait_ready(self, offset: int = 0, count: int = 1) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"llmctl worker {self.name} exited with "
                                     f"{self.proc.returncode}:\n{self.text()[offset:]}")
            return self.text()[offset:].count(" ready on ") >= count

        wait_for(ready, 30, f"worker {self.name}'s rpc-server to be ready", self.stderr)

    def text(self) -> str:
        return self.stderr.read_text() if self.stderr.exists() else ""

    def rpc_server(self) -> psutil.Process | None:
        """The rpc-server it runs now."""
        assert self.proc is not None
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        return next((c for c in children if "rpc-server" in " ".join(c.cmdline())), None)

    def stop(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return stop_process(self.proc, timeout, f"llmctl worker {self.name}", self.text)

    def accepted(self) -> int:
        """How many connections its rpc-server accepted (it logs each one)."""
        return self.log.read_text().count("Accepted client connection") \
            if self.log.exists() else 0
