"""The single-active-model lifecycle: switch, load, readiness, progress, stop, adopt.

Lifecycle is a single-threaded state machine driven by the lifecycle worker's loop: `handle()`
for each command, `tick()` whenever nothing arrived within `next_timeout()`. It owns the
backend facts and is the only writer of state.json. Every message out goes through `emit`.

States: stopped -> starting -> ready -> stopping -> stopped, and failed (a load or the running
backend died); any command moves on from failed. A switch during a load supersedes it; a stop
during a load cancels it. Every wait is bounded: the load by server.readyTimeoutMs, a stop by
server.stopTimeoutMs plus a SIGKILL wait.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from llmctl.core import llama_server
from llmctl.core.backend_process import (
    OWNER_ENV,
    BackendProcess,
    find_owned_orphans,
    health,
    port_in_use,
)
from llmctl.core.config import ConfigError, GlobalConfig, load_global
from llmctl.core.discovery import discover
from llmctl.core.paths import Paths
from llmctl.core.state import empty_backend, read_state, write_state

Emit = Callable[[dict[str, Any]], None]
log = logging.getLogger("llmctld.lifecycle")

LOAD_POLL = 0.02  # seconds between readiness checks while loading
EARLY_POLL = 0.005  # ...during the first second: small models are ready within it
WATCH_POLL = 0.5  # seconds between liveness checks of a ready backend
PROGRESS_EVERY = 0.1  # at most this often a progress event
LOG_TAIL_LINES = 30
LOG_CHECK_EVERY = 5.0
LOG_KEEP = 1024 * 1024  # what a cut log keeps of its newest part


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code == -255:
        return "exited (status unknown: it was adopted from an earlier worker)"
    if code < 0:
        import signal

        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def read_log_tail(path: Path, start: int = 0, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            begin = max(start if start <= size else 0, size - 64 * 1024)
            f.seek(begin)
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    return [ln for ln in text if ln.strip()][-lines:]


@dataclass
class Load:
    model: str
    model_path: Path
    proc: BackendProcess
    log_path: Path
    log_offset: int
    started: float  # monotonic
    deadline: float  # monotonic
    waiters: list[str] = field(default_factory=list)
    model_size: int = 0
    reads_file: bool = True
    last_progress: float = 0.0
    phase: str = "spawning"
    percent: float | None = None


class Lifecycle:
    def __init__(self, paths: Paths, emit: Emit, daemon_info: dict[str, Any]):
        self.paths = paths
        self.emit = emit
        self.daemon_info = daemon_info
        self.backend = empty_backend()
        self.proc: BackendProcess | None = None
        self.load: Load | None = None
        self.log_path: Path | None = None
        self.log_max = 20 * 1024 * 1024
        self.stop_grace = 10.0
        self.ready_timeout = 600.0
        self.finished = False
        self._last_watch = 0.0
        self._last_log_check = 0.0

    # --- boot: adopt or clean up --------------------------------------------------------------

    def boot(self) -> list[str]:
        """Take over what state.json describes. Returns notes for the daemon log."""
        notes: list[str] = []
        self._read_limits()
        data, problem = read_state(self.paths.state_file)
        if problem:
            notes.append(problem)
        record = data["backend"] if data else None
        if record:
            self.backend["generation"] = int(record.get("generation") or 0)
        if record and record["pid"] and record["state"] in ("starting", "ready", "stopping"):
            proc = BackendProcess.adopt(record)
            if proc is None:
                notes.append(f"llama-server pid {record['pid']} from state.json is gone")
            elif record["state"] == "ready" and record["port"] and \
                    health(record["host"], record["port"]) == 200:
                self.proc = proc
                self.backend.update({k: record[k] for k in (
                    "model", "pid", "create_time", "cmdline", "host", "port", "model_path",
                    "started_at", "ready_at", "load_seconds")})
                self.backend.update(state="ready", error=None, progress=None)
                self.log_path = self.paths.log_file(record["model"])
                notes.append(f"adopted running llama-server for {record['model']} "
                             f"(pid {proc.pid})")
            elif record["state"] == "starting" and record["model"]:
                notes.append(f"resuming the interrupted load of {record['model']} "
                             f"(pid {proc.pid})")
                self._resume_load(proc, record)
            else:
                notes.append(f"stopping llama-server pid {proc.pid}: not healthy")
                proc.terminate(self.stop_grace)
        adopted = {self.proc.pid} if self.proc else set()
        for orphan in find_owned_orphans(self.paths.runtime, adopted | {os.getpid()}):
            notes.append(f"stopping orphaned llama-server pid {orphan.pid}")
            try:
                stale = BackendProcess(orphan.pid, orphan.create_time(), orphan.cmdline())
            except psutil.Error:
                continue  # gone meanwhile
            stale.terminate(self.stop_grace)
        if self.proc is None and self.load is None:
            self.backend.update(empty_backend(), generation=self.backend["generation"])
            if record is not None and record["state"] == "failed":  # keep it visible
                self.backend.update(state="failed", model=record["model"],
                                    error=record["error"], exit_code=record["exit_code"],
                                    log_tail=record["log_tail"])
        self._changed()
        return notes

    def _read_limits(self) -> None:
        try:
            self._apply_limits(load_global(self.paths.config_file))
        except ConfigError:
            pass  # keep the last good limits; a switch reports the error

    def _apply_limits(self, cfg: GlobalConfig) -> None:
        self.log_max = cfg.data["daemon"]["log_max_bytes"]
        self.stop_grace = cfg.data["server"]["stopTimeoutMs"] / 1000
        self.ready_timeout = cfg.data["server"]["readyTimeoutMs"] / 1000

    def _resume_load(self, proc: BackendProcess, record: dict[str, Any]) -> None:
        timeout = self.ready_timeout
        elapsed = max(0.0, time.time() - (record["started_at"] or time.time()))
        path = Path(record["model_path"] or "")
        self.proc = proc
        self.log_path = self.paths.log_file(record["model"])
        self.load = Load(model=record["model"], model_path=path, proc=proc,
                         log_path=self.log_path, log_offset=0,
                         started=time.monotonic() - elapsed,
                         deadline=time.monotonic() + max(1.0, timeout - elapsed),
                         model_size=_size(path))
        self.backend.update({k: record[k] for k in (
            "model", "pid", "create_time", "cmdline", "host", "port", "model_path",
            "started_at")})
        self.backend.update(state="starting", progress={"phase": "loading", "percent": None})

    # --- commands -----------------------------------------------------------------------------

    def handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "control":
            action = msg.get("action")
            if action == "shutdown":
                self.shutdown()
            elif action == "reload":
                self._read_limits()
            return
        if kind != "cmd":
            return
        rid, cmd = str(msg.get("id")), msg.get("cmd")
        if cmd == "switch":
            self.switch(rid, str(msg.get("model")))
        elif cmd == "stop":
            self.stop(rid)
        elif cmd == "sync":
            self.reply(rid, True, backend=self.backend)
        else:
            self.reply(rid, False, error=_err("bad_command", f"unknown command {cmd!r}"))

    def reply(self, rid: str, ok: bool, **fields: Any) -> None:
        self.emit({"type": "reply", "id": rid, "ok": ok, **fields})

    def event(self, rids: list[str], name: str, **fields: Any) -> None:
        for rid in rids:
            self.emit({"type": "event", "id": rid, "event": name, **fields})

    def switch(self, rid: str, model_id: str) -> None:
        try:
            cfg, entry = self._model(model_id)
        except LookupError as e:
            self.reply(rid, False, error=_err("not_found", str(e)))
            return
        except ConfigError as e:
            self.reply(rid, False, error=_err("config_error", str(e)))
            return
        if entry.error:
            self.reply(rid, False, error=_err("unavailable",
                                              f"{model_id} is unavailable: {entry.error}"))
            return
        if self.load is not None and self.load.model == model_id:
            self.load.waiters.append(rid)
            self.event([rid], "starting", model=model_id)
            return
        if self.load is not None:
            self._fail_load("cancelled", f"superseded by a switch to {model_id}", kill=True)
        try:
            binary = llama_server.find_binary(cfg["server"]["binary"])
            caps = llama_server.detect(binary)
            argv = llama_server.build_argv(binary, caps, cfg, entry.model_path)
        except llama_server.BackendSetupError as e:
            if self.proc is None:  # never drop a serving model for a switch that cannot start
                self._record_failure(model_id, str(e), None, [])
            self.reply(rid, False, event="error", model=model_id,
                       error=_err("backend_setup", str(e)))
            return
        reason = None
        if self.backend["state"] == "ready" and self.backend["model"] == model_id and \
                self.proc is not None and self.proc.exit_status() is None:
            if argv == self.backend["cmdline"]:
                self.reply(rid, True, event="ready", model=model_id,
                           load_seconds=self.backend["load_seconds"], already_active=True)
                return
            # Asked for the model that runs, whose config has changed since: apply it.
            reason = "its configuration changed"
            log.info("restarting %s: %s", model_id, reason)
        self._stop_backend([rid], reason)
        host, port = cfg["server"]["host"], cfg["server"]["port"]
        if port_in_use(host, port):
            message = (f"port {port} on {host} is already in use by another program, so "
                       "llama-server could not listen there; stop that program or set "
                       "server.port in config/default.yaml")
            self._record_failure(model_id, message, None, [])
            self.reply(rid, False, event="error", model=model_id,
                       error=_err("port_in_use", message))
            return
        self._start(rid, cfg, entry.model_path, argv, host, port)

    def _model(self, model_id: str) -> tuple[dict[str, Any], Any]:
        global_cfg = load_global(self.paths.config_file)
        self._apply_limits(global_cfg)
        catalog = discover(self.paths.models_dir, global_cfg)
        entry = catalog.by_id(model_id)
        if entry is None:
            raise LookupError(f"no model with id {model_id!r}; run `llmctl models` to list them")
        return entry.config or {}, entry

    def _start(self, rid: str, cfg: dict[str, Any], model_path: Path, argv: list[str],
               host: str, port: int) -> None:
        model_id = cfg["id"]
        log_path = self.paths.log_file(model_id)
        self._rotate_log(log_path)
        offset = _size(log_path)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"--- llmctl {stamp}: starting {model_id}: {' '.join(argv)}\n")
        env = llama_server.clean_env(os.environ)
        env[OWNER_ENV] = str(self.paths.runtime)
        self.event([rid], "starting", model=model_id)
        try:
            proc = BackendProcess.spawn(argv, log_path, env)
        except OSError as e:
            message = f"could not start {argv[0]}: {e.strerror}"
            self._record_failure(model_id, message, None, [])
            self.reply(rid, False, event="error", model=model_id,
                       error=_err("backend_setup", message))
            return
        now = time.monotonic()
        log.info("starting %s (llama-server pid %d, log %s)", model_id, proc.pid, log_path)
        self.proc, self.log_path = proc, log_path
        self.load = Load(model=model_id, model_path=model_path, proc=proc, log_path=log_path,
                         log_offset=offset, started=now,
                         deadline=now + cfg["server"]["readyTimeoutMs"] / 1000,
                         waiters=[rid], model_size=_size(model_path),
                         reads_file=not cfg["llama"]["mmap"])
        self.backend.update(empty_backend(), generation=self.backend["generation"])
        self.backend.update(state="starting", model=model_id, host=host, port=port,
                            model_path=str(model_path), started_at=time.time(),
                            progress={"phase": "spawning", "percent": 0.0 if
                                      self.load.reads_file else None}, **proc.record())
        self._changed()

    def stop(self, rid: str) -> None:
        model = self.backend["model"] if self.backend["state"] in ("starting", "ready") else None
        if self.load is not None:
            self._fail_load("cancelled", "cancelled by a stop request", kill=True)
            self.backend.update(state="stopped", error=None, progress=None)
            self._changed()
        else:
            self._stop_backend([rid])
        self.reply(rid, True, stopped=model)

    def shutdown(self) -> None:
        if self.load is not None:
            self._fail_load("cancelled", "llmctld is shutting down", kill=True)
        self._stop_backend([])
        self.finished = True

    # --- the loop's periodic work -------------------------------------------------------------

    def next_timeout(self) -> float:
        if self.load is None:
            return WATCH_POLL
        return EARLY_POLL if time.monotonic() - self.load.started < 1.0 else LOAD_POLL

    def tick(self) -> None:
        now = time.monotonic()
        if self.load is not None:
            self._check_load(now)
        elif self.proc is not None and now - self._last_watch >= WATCH_POLL:
            self._last_watch = now
            code = self.proc.exit_status()
            if code is not None:
                self._backend_died(code)
        if self.log_path is not None and now - self._last_log_check >= LOG_CHECK_EVERY:
            self._last_log_check = now
            self._bound_log(self.log_path)

    def _check_load(self, now: float) -> None:
        load = self.load
        assert load is not None
        code = load.proc.exit_status()
        if code is not None:
            tail = read_log_tail(load.log_path, load.log_offset)
            hint = llama_server.diagnose(tail)
            self._fail_load("load_failed", f"llama-server {describe_exit(code)} while loading "
                            f"{load.model}" + (f": {hint}" if hint else ""), kill=False,
                            exit_code=code, tail=tail)
            return
        status = health(self.backend["host"], self.backend["port"], timeout=0.5)
        if status == 200:
            self._load_ready(load, now)
            return
        if now > load.deadline:
            tail = read_log_tail(load.log_path, load.log_offset)
            seconds = now - load.started
            self._fail_load("load_timeout", f"{load.model} was not ready after {seconds:.0f}s "
                            "(server.readyTimeoutMs); llama-server was stopped", kill=True,
                            tail=tail)
            return
        phase, percent = ("spawning" if status is None else "loading"), None
        if load.reads_file and load.model_size and status is not None:
            chars = load.proc.read_chars()
            if chars is not None:
                percent = round(min(99.0, 100.0 * chars / load.model_size), 1)
                if chars >= load.model_size:
                    phase = "warming"
        if (phase, percent) != (load.phase, load.percent) and \
                now - load.last_progress >= PROGRESS_EVERY:
            load.phase, load.percent, load.last_progress = phase, percent, now
            self.backend["progress"] = {"phase": phase, "percent": percent}
            self.event(load.waiters, "progress", model=load.model, phase=phase, percent=percent)
            self._changed(write=False)

    def _load_ready(self, load: Load, now: float) -> None:
        seconds = round(now - load.started, 3)
        log.info("%s is ready (loaded in %.2fs)", load.model, seconds)
        self.load = None
        self.backend.update(state="ready", ready_at=time.time(), load_seconds=seconds,
                            progress=None, error=None)
        self._changed()
        for rid in load.waiters:
            self.reply(rid, True, event="ready", model=load.model, load_seconds=seconds,
                       already_active=False)

    def _fail_load(self, code: str, message: str, *, kill: bool, exit_code: int | None = None,
                   tail: list[str] | None = None) -> None:
        load = self.load
        assert load is not None
        log.warning("loading %s failed: %s", load.model, message)
        self.load = None
        if kill:
            self.backend["state"] = "stopping"
            self._changed(write=False)
            status = load.proc.terminate(self.stop_grace)
            exit_code = exit_code if exit_code is not None else status
        self.proc = None
        tail = tail if tail is not None else read_log_tail(load.log_path, load.log_offset)
        if code == "cancelled":
            self.backend.update(empty_backend(), generation=self.backend["generation"])
        else:
            self._record_failure(load.model, message, exit_code, tail, changed=False)
        self._changed()
        for rid in load.waiters:
            self.reply(rid, False, event="error", model=load.model,
                       error=_err(code, message, exit_code=exit_code, log_tail=tail))

    def _record_failure(self, model: str, message: str, exit_code: int | None,
                        tail: list[str], changed: bool = True) -> None:
        self.backend.update(empty_backend(), generation=self.backend["generation"])
        self.backend.update(state="failed", model=model, error=message, exit_code=exit_code,
                            log_tail=tail)
        if changed:
            self._changed()

    def _backend_died(self, code: int) -> None:
        model = self.backend["model"]
        log.warning("llama-server for %s %s", model, describe_exit(code))
        tail = read_log_tail(self.log_path) if self.log_path else []
        self.proc = None
        self._record_failure(model, f"llama-server for {model} {describe_exit(code)}", code,
                             tail)

    def _stop_backend(self, rids: list[str], reason: str | None = None) -> None:
        if self.proc is None:
            return
        model = self.backend["model"]
        log.info("stopping %s (llama-server pid %d)", model, self.proc.pid)
        self.event(rids, "stopping", model=model, **({"reason": reason} if reason else {}))
        self.backend["state"] = "stopping"
        self._changed(write=False)
        self.proc.terminate(self.stop_grace)
        self.proc = None
        self.backend.update(empty_backend(), generation=self.backend["generation"])
        self._changed()

    # --- state and logs -----------------------------------------------------------------------

    def _changed(self, write: bool = True) -> None:
        self.backend["generation"] += 1
        if write:
            try:
                write_state(self.paths.state_file, self.backend, self.daemon_info)
            except OSError as e:
                self.emit({"type": "log", "level": "error",
                           "message": f"cannot write {self.paths.state_file}: {e}"})
        self.emit({"type": "state", "backend": self.backend})

    def _rotate_log(self, path: Path) -> None:
        if _size(path) > self.log_max:
            try:
                os.replace(path, path.with_suffix(".log.1"))
            except OSError:
                pass

    def _bound_log(self, path: Path) -> None:
        """Keep a running backend's log under the limit. llama-server writes with O_APPEND, so
        after we cut the file its next line lands at the new end."""
        if _size(path) <= self.log_max:
            return
        keep = min(self.log_max // 2, LOG_KEEP)  # held in memory for a moment: keep it small
        try:
            with open(path, "r+b") as f:
                f.seek(-keep, os.SEEK_END)
                tail = f.read()
                f.seek(0)
                f.truncate()
                f.write(b"--- llmctl: log truncated to its last part ---\n" + tail)
        except OSError:
            pass


def _err(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **{k: v for k, v in extra.items()
                                                 if v is not None}}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
