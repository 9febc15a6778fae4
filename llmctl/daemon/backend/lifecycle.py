"""The single-active-model lifecycle: switch, load, readiness, progress, stop, adopt, and the
one place that decides to load the default model.

Lifecycle is a single-threaded state machine driven by the lifecycle worker's loop: `handle()`
for each message, `tick()` whenever nothing arrived within `next_timeout()`. Neither ever
waits for a process: a load and a stop are phases the loop ticks through, so status, a stop
during a stop and a switch that supersedes a pending one are answered while a backend shuts
down. It owns the backend record (core.state.Backend; every state change goes through its
`transition()`) and is the only writer of state.json. Every message out goes through `emit`.

- A switch while a backend runs: stop it (phase `stopping`), then start the new one (the
  `Plan`). Another switch meanwhile replaces the plan (the first gets `cancelled`); a stop
  drops it.
- A switch during a load supersedes it; a stop during a load cancels it.
- Ensure (a proxied request found nothing loaded): wake the model an idle unload stopped
  (backend.unloaded), else load daemon.default_model. When that default load fails, further
  Ensures are refused with the same error, without a new attempt, until the configuration or
  model files change, an explicit switch happens, or DEFAULT_RETRY_AFTER passed.

Every wait is bounded: the load by server.readyTimeoutMs, a stop by server.stopTimeoutMs plus a
SIGKILL wait (core.backend_process.Termination).
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

from llmctl.core.config import ConfigError, GlobalConfig, load_global
from llmctl.core.discovery import ModelEntry, discover
from llmctl.core.paths import Paths
from llmctl.core.state import Backend, read_state, write_state
from llmctl.daemon.backend import llama_server, starter
from llmctl.daemon.backend.exits import describe_exit
from llmctl.daemon.backend.log_file import bound_log, file_size, open_for_start, read_log_tail
from llmctl.daemon.backend.process import (
    OWNER_ENV,
    BackendProcess,
    Termination,
    find_owned_orphans,
    health,
    port_in_use,
)
from llmctl.daemon.backend.stall import StallDetector
from llmctl.daemon.ipc import protocol as p

Emit = Callable[[p.Message], None]
log = logging.getLogger("llmctld.lifecycle")

LOAD_POLL = 0.02  # seconds between readiness checks while loading
EARLY_POLL = 0.005  # ...during the first second: small models are ready within it
STOP_POLL = 0.01  # ...while a backend stops
WATCH_POLL = 0.5  # seconds between liveness checks of a ready backend
PROGRESS_EVERY = 0.1  # at most this often a progress event
LOG_CHECK_EVERY = 5.0
DEFAULT_RETRY_AFTER = 60.0  # a failed default load is retried on demand after this long
STARTUP_ID = "startup"  # the command id of the start-up load: nobody waits for its reply


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
    default: bool = False  # started by an Ensure
    pin: bool = False
    stall: StallDetector = field(default_factory=lambda: StallDetector(0.0))


@dataclass
class Plan:
    """A switch ready to start once the running backend has stopped."""

    model: str
    cfg: dict[str, Any]
    model_path: Path
    argv: list[str]
    waiters: list[str]
    default: bool = False
    pin: bool = False


@dataclass
class Failure:
    """What a stop that ends a failed load records and answers."""

    code: str
    message: str
    model: str
    waiters: list[str]
    tail: list[str] | None
    default: bool


@dataclass
class Stopping:
    termination: Termination
    model: str | None
    waiters: list[str] = field(default_factory=list)  # Stop commands, answered when done
    cancelled: list[tuple[list[str], str]] = field(default_factory=list)  # (rids, why)
    failure: Failure | None = None
    then: Plan | None = None
    unloaded: dict[str, Any] | None = None  # an idle unload: recorded once it is stopped


@dataclass
class DefaultFailure:
    model: str
    signature: tuple[Any, ...]
    retry_at: float  # monotonic
    message: str


class Lifecycle:
    def __init__(self, paths: Paths, emit: Emit, daemon_info: dict[str, Any]):
        self.paths = paths
        self.emit = emit
        self.daemon_info = daemon_info
        self.backend = Backend()
        self.proc: BackendProcess | None = None
        self.load: Load | None = None
        self.stopping: Stopping | None = None
        self.default_failure: DefaultFailure | None = None
        self.log_path: Path | None = None
        self.log_max = 20 * 1024 * 1024
        self.stop_grace = 10.0
        self.ready_timeout = 600.0
        self.shutting_down = False
        self.finished = False
        self._last_watch = 0.0
        self._last_log_check = 0.0
        self._table: dict[type[p.Message], Callable[[Any], None]] = {
            p.Switch: lambda m: self.switch(m.id, m.model, pin=m.pin),
            p.Stop: lambda m: self.stop(m.id, idle_seconds=m.idle_seconds),
            p.Status: lambda m: self.reply(m.id, True, backend=self.backend.to_dict()),
            p.Ensure: lambda m: self.ensure(m.id),
            p.ReloadConfig: lambda m: self.reload(),
            p.Shutdown: lambda m: self.shutdown(),
        }

    # --- boot: adopt or clean up --------------------------------------------------------------

    def boot(self) -> list[str]:
        """Take over what state.json describes (blocking: before the worker reports Ready).
        Returns notes for the daemon log."""
        notes: list[str] = []
        self._read_limits()
        data, problem = read_state(self.paths.state_file)
        if problem:
            notes.append(problem)
        record = Backend.from_dict(data["backend"]) if data else None
        if record is not None:
            self.backend.generation = record.generation
        if record and record.pid and record.state in ("starting", "ready", "stopping"):
            proc = BackendProcess.adopt(record.to_dict())
            if proc is None:
                notes.append(f"llama-server pid {record.pid} from state.json is gone")
            elif record.state == "ready" and record.port and record.host and \
                    health(record.host, record.port) == 200:
                self.proc = proc
                self._restore(record, state="ready")
                self.log_path = self.paths.log_file(record.model or "")
                notes.append(f"adopted running llama-server for {record.model} "
                             f"(pid {proc.pid})")
            elif record.state == "starting" and record.model:
                notes.append(f"resuming the interrupted load of {record.model} "
                             f"(pid {proc.pid})")
                self._resume_load(proc, record)
            else:
                notes.append(f"stopping llama-server pid {proc.pid}: not healthy")
                proc.terminate(self.stop_grace)
        notes += self._stop_orphans()
        if self.proc is None and record is not None and record.state == "failed":
            self.backend.transition("failed", model=record.model, error=record.error,
                                    exit_code=record.exit_code, log_tail=record.log_tail)
        elif self.proc is None and self.load is None and record is not None:
            self.backend.unloaded = record.unloaded  # the next request still wakes it
        self._changed()
        return notes

    def _stop_orphans(self) -> list[str]:
        """Stop the llama-servers of this runtime dir that no worker keeps track of (blocking,
        up to the stop grace each): a worker killed between spawning one and recording it
        in state.json leaves one behind, holding the backend port. Notes for the log."""
        notes = []
        ours = {self.proc.pid} if self.proc else set()
        for orphan in find_owned_orphans(self.paths.runtime, ours | {os.getpid()}):
            notes.append(f"stopping orphaned llama-server pid {orphan.pid}")
            try:
                stale = BackendProcess(orphan.pid, orphan.create_time(), orphan.cmdline())
            except psutil.Error:
                continue  # gone meanwhile
            stale.terminate(self.stop_grace)
        return notes

    def first_boot_of_daemon(self) -> bool:
        """True unless state.json was written by this very daemon (a restarted worker)."""
        data, _ = read_state(self.paths.state_file)
        daemon = data.get("daemon") if data else None
        return not (isinstance(daemon, dict) and daemon.get("pid") == self.daemon_info.get("pid")
                    and daemon.get("started_at") == self.daemon_info.get("started_at"))

    def _restore(self, record: Backend, state: str) -> None:
        """Adoption: the record of a process an earlier worker started (not a transition:
        the process is already in that state)."""
        restored = Backend.from_dict(record.to_dict())
        restored.state, restored.error, restored.progress = state, None, None
        restored.generation = self.backend.generation
        self.backend = restored

    def _read_limits(self) -> None:
        try:
            self._apply_limits(load_global(self.paths.config_file))
        except ConfigError:
            pass  # keep the last good limits; a switch reports the error

    def _apply_limits(self, cfg: GlobalConfig) -> None:
        self.log_max = cfg.data["daemon"]["log_max_bytes"]
        self.stop_grace = cfg.data["server"]["stopTimeoutMs"] / 1000
        self.ready_timeout = cfg.data["server"]["readyTimeoutMs"] / 1000

    def _resume_load(self, proc: BackendProcess, record: Backend) -> None:
        timeout = self.ready_timeout
        elapsed = max(0.0, time.time() - (record.started_at or time.time()))
        path = Path(record.model_path or "")
        model = record.model or ""
        self.proc = proc
        self.log_path = self.paths.log_file(model)
        self.load = Load(model=model, model_path=path, proc=proc,
                         log_path=self.log_path, log_offset=0,
                         started=time.monotonic() - elapsed,
                         deadline=time.monotonic() + max(1.0, timeout - elapsed),
                         model_size=file_size(path))
        self._restore(record, state="starting")
        self.backend.progress = {"phase": "loading", "percent": None}

    # --- messages -----------------------------------------------------------------------------

    def handle(self, message: p.Message) -> None:
        p.dispatch(self._table, message, "lifecycle worker", answer=self.emit)

    def reply(self, rid: str, ok: bool, error: dict[str, Any] | None = None,
              **data: Any) -> None:
        self.emit(p.Reply(rid, ok, data, error))

    def event(self, rids: list[str], name: str, **data: Any) -> None:
        for rid in rids:
            self.emit(p.Event(rid, name, data))

    def _refuse(self, rids: list[str], code: str, message: str, *, model: str | None = None,
                default: str | None = None, **extra: Any) -> None:
        """Answer commands with an error. `default` names the default model when this ends
        an attempt to load it: the failure is remembered (see ensure)."""
        if code != "cancelled":
            log.info("refused (%s): %s", code, message)
        if default:
            self.default_failure = DefaultFailure(default, self._signature(default),
                                                  time.monotonic() + DEFAULT_RETRY_AFTER,
                                                  message)
        fields = {"event": "error", "model": model} if model else {}
        for rid in rids:
            self.reply(rid, False, error=_err(code, message, **extra), **fields)

    def reload(self) -> None:
        self._read_limits()
        self.default_failure = None  # the user asked for a fresh look

    # --- switch --------------------------------------------------------------------------------

    def switch(self, rid: str, model_id: str, default: bool = False, pin: bool = False) -> None:
        if not default:
            self.default_failure = None  # an explicit switch: the user is on it
        as_default = model_id if default else None
        try:
            cfg, entry = self._model(model_id)
        except LookupError as e:
            self._refuse([rid], "not_found", str(e), default=as_default)
            return
        except ConfigError as e:
            self._refuse([rid], "config_error", str(e), default=as_default)
            return
        if entry.error:
            self._refuse([rid], "unavailable", f"{model_id} is unavailable: {entry.error}",
                         default=as_default)
            return
        if self.load is not None and self.load.model == model_id:
            self.load.pin = self.load.pin or pin
            self.load.waiters.append(rid)
            self.event([rid], "starting", model=model_id)
            return
        pending = self.stopping.then if self.stopping is not None else None
        if pending is not None and pending.model == model_id:
            pending.pin = pending.pin or pin
            pending.waiters.append(rid)
            return
        assert entry.model_path is not None
        try:
            binary = llama_server.find_binary(cfg["server"]["binary"])
            caps = llama_server.detect(binary)  # cached per binary (path, size, mtime)
            argv = llama_server.build_argv(binary, caps, cfg, entry.model_path)
        except llama_server.BackendSetupError as e:
            if self.proc is None and self.stopping is None:
                # never drop a serving model for a switch that cannot start
                self._record_failure(model_id, str(e), None, [])
            self._refuse([rid], "backend_setup", str(e), model=model_id, default=as_default)
            return
        reason = None
        if self.backend.state == "ready" and self.backend.model == model_id and \
                self.proc is not None and self.proc.exit_status() is None:
            if argv == self.backend.cmdline:
                if self.backend.pinned != pin:  # a plain switch unpins, --pin pins
                    self.backend.pinned = pin
                    self._changed()
                self.reply(rid, True, event="ready", model=model_id,
                           load_seconds=self.backend.load_seconds, already_active=True)
                return
            # Asked for the model that runs, whose config has changed since: apply it.
            reason = "its configuration changed"
            log.info("restarting %s: %s", model_id, reason)
        plan = Plan(model_id, cfg, entry.model_path, argv, [rid], default, pin)
        if self.load is not None:
            self._end_load("cancelled", f"superseded by a switch to {model_id}")
        if self.stopping is not None:
            if self.stopping.then is not None:
                old = self.stopping.then
                self._refuse(old.waiters, "cancelled", f"superseded by a switch to {model_id}",
                             model=old.model)
            self.stopping.then = plan
            log.info("the switch to %s waits for %s to stop", model_id, self.stopping.model)
            self.event([rid], "stopping", model=self.stopping.model)
            return
        if self.proc is not None:
            self._begin_stop([rid], reason).then = plan
            return
        self._launch(plan)

    def _model(self, model_id: str) -> tuple[dict[str, Any], ModelEntry]:
        global_cfg = load_global(self.paths.config_file)
        self._apply_limits(global_cfg)
        catalog = discover(self.paths.models_dir, global_cfg, self.paths.header_cache)
        entry = catalog.by_id(model_id)
        if entry is None:
            raise LookupError(f"no model with id {model_id!r}; run `llmctl models` to list them")
        return entry.config or {}, entry

    def _launch(self, plan: Plan) -> None:
        host, port = plan.cfg["server"]["host"], plan.cfg["server"]["port"]
        if port_in_use(host, port):
            # a worker killed right after a spawn, before the record, may have left one of
            # ours there (its marker was not yet visible to this worker's boot scan)
            for note in self._stop_orphans():
                log.warning(note)
        if port_in_use(host, port):
            message = (f"port {port} on {host} is already in use by another program, so "
                       "llama-server could not listen there; stop that program or set "
                       "server.port in config/default.yaml")
            self._record_failure(plan.model, message, None, [])
            self._refuse(plan.waiters, "port_in_use", message, model=plan.model,
                         default=plan.model if plan.default else None)
            return
        model_id, argv = plan.model, plan.argv
        log_path = self.paths.log_file(model_id)
        offset = open_for_start(log_path, self.log_max,
                                f"starting {model_id}: {' '.join(argv)}")
        env = llama_server.clean_env(os.environ)
        env[OWNER_ENV] = str(self.paths.runtime)
        self.event(plan.waiters, "starting", model=model_id)
        try:
            proc = BackendProcess.spawn(argv, log_path, env)
        except OSError as e:
            message = f"could not start {argv[0]}: {e.strerror}"
            self._record_failure(model_id, message, None, [])
            self._refuse(plan.waiters, "backend_setup", message, model=model_id,
                         default=plan.model if plan.default else None)
            return
        now = time.monotonic()
        log.info("starting %s (llama-server pid %d, log %s)", model_id, proc.pid, log_path)
        self.proc, self.log_path = proc, log_path
        self.load = Load(model=model_id, model_path=plan.model_path, proc=proc,
                         log_path=log_path, log_offset=offset, started=now,
                         deadline=now + plan.cfg["server"]["readyTimeoutMs"] / 1000,
                         waiters=list(plan.waiters), model_size=file_size(plan.model_path),
                         reads_file=not plan.cfg["llama"]["mmap"], default=plan.default,
                         pin=plan.pin,
                         stall=StallDetector(plan.cfg["server"]["stallTimeoutMs"] / 1000))
        self.backend.transition(
            "starting", model=model_id, host=host, port=port, model_path=str(plan.model_path),
            started_at=time.time(), progress={"phase": "spawning", "percent": 0.0 if
                                              self.load.reads_file else None},
            pid=proc.pid, create_time=proc.create_time, cmdline=proc.cmdline)
        self._changed()

    # --- ensure: the default model, on demand -----------------------------------------------

    def ensure(self, rid: str) -> None:
        if self.backend.state == "ready" and self.load is None and self.stopping is None:
            self.reply(rid, True, model=self.backend.model, already_active=True)
            return
        if self.load is not None:
            self.load.waiters.append(rid)
            return
        if self.stopping is not None and self.stopping.then is not None:
            self.stopping.then.waiters.append(rid)
            return
        unloaded = self.backend.unloaded if self.backend.state == "stopped" else None
        if unloaded and self.proc is None:
            log.info("waking %s (unloaded after %.0fs idle) for a waiting request",
                     unloaded["model"], unloaded["idle_seconds"])
            self.switch(rid, unloaded["model"])
            return
        try:
            model = self._default_model()
        except ConfigError as e:
            self._refuse([rid], "config_error", str(e))
            return
        if not model:
            self._refuse([rid], "no_model", self._idle_message())
            return
        failed = self.default_failure
        if failed is not None and failed.model == model and \
                failed.signature == self._signature(model) and time.monotonic() < failed.retry_at:
            self._refuse([rid], "default_model_failed", failed.message, model=model,
                         retry_in=round(failed.retry_at - time.monotonic()))
            return
        log.info("loading the default model %s (asked by %s)", model,
                 "start-up" if rid == STARTUP_ID else "a waiting request")
        self.switch(rid, model, default=True)

    def load_default_on_startup(self) -> None:
        """daemon.load_default_on_startup: the same path as a request's Ensure."""
        try:
            daemon_cfg = load_global(self.paths.config_file).data["daemon"]
        except ConfigError:
            return
        if daemon_cfg["load_default_on_startup"] and self.proc is None and \
                self._default_model():
            log.info("daemon.load_default_on_startup is set")
            self.ensure(STARTUP_ID)

    def _default_model(self) -> str | None:
        """daemon.default_model, else the starter model when it is there (daemon/backend/starter.py)."""
        cfg = load_global(self.paths.config_file)
        return starter.default_model(cfg, discover(self.paths.models_dir, cfg,
                                                   self.paths.header_cache))

    def _signature(self, model: str) -> tuple[Any, ...]:
        """What must change for a failed default load to be worth another try."""
        files = [self.paths.config_file]
        try:
            entry = discover(self.paths.models_dir, load_global(self.paths.config_file),
                             self.paths.header_cache).by_id(model)
        except ConfigError:
            entry = None
        if entry is not None:  # a model found without config has no config file
            files += [f for f in (entry.config_file, entry.model_path) if f is not None]
        out: list[Any] = []
        for path in files:
            try:
                st = path.stat()
                out.append((str(path), st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((str(path), None))
        return tuple(out)

    def _idle_message(self) -> str:
        if self.backend.state == "failed" and self.backend.error:
            return (f"no model is loaded: the last one failed ({self.backend.error}). "
                    "Run `llmctl switch <model>`, or set daemon.default_model to load one "
                    "on demand")
        return ("no model is loaded. Run `llmctl switch <model>` (see `llmctl models`), or set "
                "daemon.default_model in config/default.yaml to load one on the first request")

    # --- stop ----------------------------------------------------------------------------------

    def stop(self, rid: str, idle_seconds: float | None = None) -> None:
        """Stop what runs. `idle_seconds`: an idle unload (the proxy saw no request for that
        long), recorded in the backend record so that the next request wakes this model."""
        if self.stopping is not None:
            self._drop_plan("cancelled by a stop request")
            self.stopping.waiters.append(rid)
            return
        if self.load is not None:
            model = self.load.model
            self._end_load("cancelled", "cancelled by a stop request")
            if self.stopping is not None:
                self.stopping.waiters.append(rid)
            else:  # the process had already exited
                self.reply(rid, True, stopped=model)
            return
        if self.proc is not None:
            stopping = self._begin_stop([])
            stopping.waiters.append(rid)
            if idle_seconds is not None and stopping.model:
                log.info("unloading %s after %.0fs without requests", stopping.model,
                         idle_seconds)
                stopping.unloaded = {"model": stopping.model, "idle_seconds": idle_seconds,
                                     "at": time.time()}
            return
        self.reply(rid, True, stopped=None)

    def shutdown(self) -> None:
        self.shutting_down = True
        if self.stopping is not None:
            self._drop_plan("llmctld is shutting down")
        elif self.load is not None:
            self._end_load("cancelled", "llmctld is shutting down")
        elif self.proc is not None:
            self._begin_stop([])
        self.finished = self.stopping is None

    def _drop_plan(self, why: str) -> None:
        assert self.stopping is not None
        plan, self.stopping.then = self.stopping.then, None
        if plan is not None:
            self._refuse(plan.waiters, "cancelled", why, model=plan.model)

    def _begin_stop(self, rids: list[str], reason: str | None = None) -> Stopping:
        assert self.proc is not None
        model = self.backend.model
        log.info("stopping %s (llama-server pid %d)", model, self.proc.pid)
        self.event(rids, "stopping", model=model, **({"reason": reason} if reason else {}))
        self.backend.transition("stopping")
        self.stopping = Stopping(Termination(self.proc, self.stop_grace), model)
        self._changed(write=False)
        return self.stopping

    def _step_stopping(self) -> None:
        stopping = self.stopping
        assert stopping is not None
        if not stopping.termination.step():
            return
        self.stopping, self.proc = None, None
        failure = stopping.failure
        exit_code = stopping.termination.exit_code
        if failure is not None and failure.code == "load_stalled":  # say how it ended
            failure.message += f"; llama-server {describe_exit(exit_code)}"
        if failure is not None:
            tail = failure.tail if failure.tail is not None else []
            self._record_failure(failure.model, failure.message, exit_code, tail,
                                 changed=False)
        else:
            self.backend.transition("stopped", unloaded=stopping.unloaded)
        self._changed()
        if failure is not None:
            self._refuse(failure.waiters, failure.code, failure.message, model=failure.model,
                         default=failure.model if failure.default else None,
                         exit_code=exit_code, log_tail=failure.tail)
        for rids, why in stopping.cancelled:
            self._refuse(rids, "cancelled", why, model=stopping.model)
        for rid in stopping.waiters:
            self.reply(rid, True, stopped=stopping.model)
        if self.shutting_down:
            self.finished = True
        elif stopping.then is not None:
            self._launch(stopping.then)

    # --- the loop's periodic work -------------------------------------------------------------

    def next_timeout(self) -> float:
        if self.stopping is not None:
            return STOP_POLL
        if self.load is None:
            return WATCH_POLL
        return EARLY_POLL if time.monotonic() - self.load.started < 1.0 else LOAD_POLL

    def tick(self, exited: bool = False) -> None:
        """The periodic work; `exited`: the loop saw llama-server exit (look now, not at the
        next liveness poll)."""
        now = time.monotonic()
        if self.stopping is not None:
            self._step_stopping()
        elif self.load is not None:
            self._check_load(now)
        elif self.proc is not None and (exited or now - self._last_watch >= WATCH_POLL):
            self._last_watch = now
            code = self.proc.exit_status()
            if code is not None:
                self._backend_died(code)
        if self.log_path is not None and now - self._last_log_check >= LOG_CHECK_EVERY:
            self._last_log_check = now
            bound_log(self.log_path, self.log_max)

    def _check_load(self, now: float) -> None:
        load = self.load
        assert load is not None
        code = load.proc.exit_status()
        if code is not None:
            tail = read_log_tail(load.log_path, load.log_offset)
            hint = llama_server.diagnose(tail)
            self._end_load("load_failed", f"llama-server {describe_exit(code)} while loading "
                           f"{load.model}" + (f": {hint}" if hint else ""), exit_code=code,
                           tail=tail)
            return
        host, port = self.backend.host or "", self.backend.port or 0
        status = health(host, port, timeout=0.5)
        if status == 200:
            self._load_ready(load, now)
            return
        if now > load.deadline:
            tail = read_log_tail(load.log_path, load.log_offset)
            seconds = now - load.started
            self._end_load("load_timeout", f"{load.model} was not ready after {seconds:.0f}s "
                           "(server.readyTimeoutMs); llama-server was stopped", tail=tail)
            return
        phase, percent, chars = ("spawning" if status is None else "loading"), None, None
        if load.reads_file and load.model_size and status is not None:
            chars = load.proc.read_chars()
            if chars is not None:
                percent = round(min(99.0, 100.0 * chars / load.model_size), 1)
                if chars >= load.model_size:
                    phase = "warming"
        if (stalled := load.stall.observe(now, chars, percent)) is not None:
            self._end_load("load_stalled", f"loading {load.model} {stalled}",
                           tail=read_log_tail(load.log_path, load.log_offset))
            return
        if (phase, percent) != (load.phase, load.percent) and \
                now - load.last_progress >= PROGRESS_EVERY:
            load.phase, load.percent, load.last_progress = phase, percent, now
            self.backend.progress = {"phase": phase, "percent": percent}
            self.event(load.waiters, "progress", model=load.model, phase=phase, percent=percent)
            self._changed(write=False)

    def _load_ready(self, load: Load, now: float) -> None:
        seconds = round(now - load.started, 3)
        log.info("%s is ready (loaded in %.2fs)", load.model, seconds)
        self.load = None
        if load.default:
            self.default_failure = None
        self.backend.transition("ready", ready_at=time.time(), load_seconds=seconds,
                                progress=None, error=None, pinned=load.pin)
        self._changed()
        for rid in load.waiters:
            self.reply(rid, True, event="ready", model=load.model, load_seconds=seconds,
                       already_active=False)

    def _end_load(self, code: str, message: str, *, exit_code: int | None = None,
                  tail: list[str] | None = None) -> None:
        """A load ends without a ready backend. If the process still runs it is stopped
        first (a stopping phase) and its waiters are answered once it is gone."""
        load = self.load
        assert load is not None
        log.warning("loading %s failed: %s", load.model, message)
        self.load = None
        if load.proc.exit_status() is None:
            stopping = self._begin_stop([])
            if code == "cancelled":
                stopping.cancelled.append((load.waiters, message))
            else:
                stopping.failure = Failure(code, message, load.model, load.waiters, tail,
                                           load.default)
            return
        self.proc = None
        tail = tail if tail is not None else read_log_tail(load.log_path, load.log_offset)
        if code == "cancelled":
            self.backend.transition("stopped")
        else:
            self._record_failure(load.model, message, exit_code, tail, changed=False)
        self._changed()
        self._refuse(load.waiters, code, message, model=load.model,
                     default=load.model if load.default else None,
                     exit_code=exit_code, log_tail=tail)

    def _record_failure(self, model: str, message: str, exit_code: int | None,
                        tail: list[str], changed: bool = True) -> None:
        self.backend.transition("failed", model=model, error=message, exit_code=exit_code,
                                log_tail=tail)
        if changed:
            self._changed()

    def _backend_died(self, code: int) -> None:
        model = self.backend.model or "?"
        log.warning("llama-server for %s %s", model, describe_exit(code))
        tail = read_log_tail(self.log_path) if self.log_path else []
        self.proc = None
        self._record_failure(model, f"llama-server for {model} {describe_exit(code)}", code,
                             tail)

    # --- state --------------------------------------------------------------------------------

    def _changed(self, write: bool = True) -> None:
        self.backend.generation += 1
        record = self.backend.to_dict()
        if write:
            try:
                write_state(self.paths.state_file, record, self.daemon_info)
            except OSError as e:
                log.error("cannot write %s: %s", self.paths.state_file, e)
        self.emit(p.State(record))


def _err(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **{k: v for k, v in extra.items()
                                                 if v is not None}}
