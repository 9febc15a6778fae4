"""Where llmctl keeps its files, and the environment overrides that move them.

$LLMCTL_HOME          config/default.yaml, gguf/<dir>/config.yaml   (~/.local/share/llmctl)
$LLMCTL_RUNTIME_HOME  state.json, llmctld.pid, logs/<model>.log      (defaults to $LLMCTL_HOME)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

DEFAULT_DAEMON_HOST = "127.0.0.1"
DEFAULT_DAEMON_PORT = 16384


class Paths(NamedTuple):  # not a dataclass: importing dataclasses costs the CLI ~4 ms
    home: Path
    runtime: Path

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ
        home = Path(env.get("LLMCTL_HOME") or Path.home() / ".local" / "share" / "llmctl")
        runtime = Path(env.get("LLMCTL_RUNTIME_HOME") or home)
        return cls(home=home.expanduser().absolute(), runtime=runtime.expanduser().absolute())

    @property
    def config_file(self) -> Path:
        return self.home / "config" / "default.yaml"

    @property
    def models_dir(self) -> Path:
        return self.home / "gguf"

    @property
    def header_cache(self) -> Path:
        """GGUF header facts by path, size and mtime (core/scan.py); safe to delete."""
        return self.runtime / "cache" / "gguf-headers.json"

    @property
    def state_file(self) -> Path:
        return self.runtime / "state.json"

    @property
    def pid_file(self) -> Path:
        return self.runtime / "llmctld.pid"

    @property
    def kv_dir(self) -> Path:
        """Saved KV caches, one directory per model (daemon/kvcache/store.py)."""
        return self.runtime / "kv"

    @property
    def logs_dir(self) -> Path:
        return self.runtime / "logs"

    def log_file(self, model_id: str) -> Path:
        """The log of one model. Ids are validated by the config loader (no separators, no dots
        at the start), and this re-checks so a bad id can never name a path outside logs/."""
        path = self.logs_dir / f"{model_id}.log"
        if path.parent != self.logs_dir or model_id.startswith("."):
            raise ValueError(f"invalid model id for a log name: {model_id!r}")
        return path


def env_address(environ: os._Environ[str] | dict[str, str] | None = None,
                ) -> tuple[str | None, int | None]:
    """LLMCTL_HOST and LLMCTL_PORT as set (None where unset): the one parser of them, for the
    daemon and every client. Raises ValueError for a port that is not a number."""
    env = os.environ if environ is None else environ
    port_text = env.get("LLMCTL_PORT")
    if port_text and not port_text.isdigit():
        raise ValueError(f"LLMCTL_PORT must be a port number, not {port_text!r}")
    return env.get("LLMCTL_HOST") or None, int(port_text) if port_text else None


def base_url(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"
