"""What the lifecycle's jobs share: the backend record and its one process, the limits read
from the configuration, the memory of a failed default load, and every message out.

Only the lifecycle worker has one. The record (core.state.Backend) changes only through its
`transition()`, and `changed()` publishes it: state.json for a restarted process, a State
message for the proxy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.core.config import ConfigError, GlobalConfig, load_global, rpc_check_seconds
from llmctl.core.paths import Paths
from llmctl.core.state import Backend, write_state
from llmctl.daemon.backend import catalog
from llmctl.daemon.backend.process import BackendProcess
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.kvcache.continuity import Continuity
from llmctl.daemon.rpc.health import Checker

Emit = Callable[[p.Message], None]
log = logging.getLogger("llmctld.lifecycle")

DEFAULT_RETRY_AFTER = 60.0  # a failed default load is retried on demand after this long


@dataclass
class DefaultFailure:
    model: str
    signature: tuple[Any, ...]
    retry_at: float  # monotonic
    message: str


class BackendContext:
    def __init__(self, paths: Paths, emit: Emit, daemon_info: dict[str, Any]):
        self.paths = paths
        self.emit = emit
        self.daemon_info = daemon_info
        self.backend = Backend()
        self.proc: BackendProcess | None = None  # the one llama-server, loading or running
        self.log_path: Path | None = None
        self.default_failure: DefaultFailure | None = None
        self.kv = Continuity(paths)  # the saved KV caches (daemon/kvcache/)
        self.log_max = 20 * 1024 * 1024
        self.stop_grace = 10.0
        self.ready_timeout = 600.0
        self.adopt_timeout = 10.0  # server.adoptTimeoutMs (backend/process.py await_health)
        self.rpc = Checker()  # the RPC workers' health (backend/rpc_guard.py acts on it)
        self.rpc_published = 0  # the checker's generation last sent to the proxies

    # --- limits ---------------------------------------------------------------------------------

    def read_limits(self) -> None:
        try:
            self.apply_limits(load_global(self.paths.config_file))
        except ConfigError:
            pass  # keep the last good limits; a switch reports the error

    def apply_limits(self, cfg: GlobalConfig) -> None:
        self.log_max = cfg.data["daemon"]["log_max_bytes"]
        self.stop_grace = cfg.data["server"]["stopTimeoutMs"] / 1000
        self.ready_timeout = cfg.data["server"]["readyTimeoutMs"] / 1000
        self.adopt_timeout = cfg.data["server"]["adoptTimeoutMs"] / 1000
        self.rpc.configure(cfg.data["workers"], rpc_check_seconds(cfg))

    # --- messages out ---------------------------------------------------------------------------

    def reply(self, rid: str, ok: bool, error: dict[str, Any] | None = None,
              **data: Any) -> None:
        events = self.kv.take_events()  # saves and restores, counted once by the proxy
        if events:
            data["kv_events"] = events
        self.emit(p.Reply(rid, ok, data, error))

    def event(self, rids: list[str], name: str, **data: Any) -> None:
        for rid in rids:
            self.emit(p.Event(rid, name, data))

    def refuse(self, rids: list[str], code: str, message: str, *, model: str | None = None,
               default: str | None = None, **extra: Any) -> None:
        """Answer commands with an error. `default` names the default model when this ends
        an attempt to load it: the failure is remembered (see default_model.py)."""
        if code != "cancelled":
            log.info("refused (%s): %s", code, message)
        if default:
            self.default_failure = DefaultFailure(default, catalog.signature(self.paths, default),
                                                  time.monotonic() + DEFAULT_RETRY_AFTER,
                                                  message)
        fields = {"event": "error", "model": model} if model else {}
        for rid in rids:
            self.reply(rid, False, error=err(code, message, **extra), **fields)

    # --- the record -----------------------------------------------------------------------------

    def record_failure(self, model: str, message: str, exit_code: int | None,
                       tail: list[str], changed: bool = True) -> None:
        self.backend.transition("failed", model=model, error=message, exit_code=exit_code,
                                log_tail=tail)
        if changed:
            self.changed()

    def changed(self, write: bool = True) -> None:
        """Publish the record: to every proxy, and (`write`) to state.json."""
        self.backend.generation += 1
        record = self.backend.to_dict()
        if write:
            try:
                write_state(self.paths.state_file, record, self.daemon_info)
            except OSError as e:
                log.error("cannot write %s: %s", self.paths.state_file, e)
        self.emit(p.State(record))


def err(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **{k: v for k, v in extra.items()
                                                 if v is not None}}
