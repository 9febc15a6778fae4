"""The single-active-model lifecycle: the lifecycle worker's one entry point.

Lifecycle is a single-threaded state machine driven by the lifecycle worker's loop: `handle()`
for each message, `tick()` whenever nothing arrived within `next_timeout()`. Neither ever
waits for a process: a load and a stop are phases the loop ticks through, so status, a stop
during a stop and a switch that supersedes a pending one are answered while a backend shuts
down. Its jobs live beside it, one module each:

- context.py        the backend record, its process, state.json and every message out
- adoption.py       boot: adopt what state.json describes, or clean it up
- loading.py        switch and load, until ready or failed
- stopping.py       stop, until the process is gone; then what was planned for afterwards
- default_model.py  Ensure: wake the idle-unloaded model or load the default one
- kvcache/command.py  (beside the KV store) the saved caches: list, clear, what a restore
                    reused; stopping and loading save and restore

This module routes the messages to them, and does the periodic work: a load's checks, a
stop's steps, the liveness of a ready backend, the log's size bound.

Every wait is bounded: the load by server.readyTimeoutMs, a stop by server.stopTimeoutMs plus a
SIGKILL wait (process.Termination).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from llmctl.core.exits import describe_exit
from llmctl.core.log_file import bound_log, read_log_tail
from llmctl.core.paths import Paths
from llmctl.daemon.backend import rpc_guard
from llmctl.daemon.backend.adoption import Adoption
from llmctl.daemon.backend.context import BackendContext, Emit
from llmctl.daemon.backend.default_model import DefaultModel
from llmctl.daemon.backend.loading import Loader
from llmctl.daemon.backend.stopping import Stopper
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.kvcache.command import CacheCommand

log = logging.getLogger("llmctld.lifecycle")

LOAD_POLL = 0.02  # seconds between readiness checks while loading
EARLY_POLL = 0.005  # ...during the first second: small models are ready within it
STOP_POLL = 0.01  # ...while a backend stops
WATCH_POLL = 0.5  # seconds between liveness checks of a ready backend
LOG_CHECK_EVERY = 5.0


class Lifecycle:
    def __init__(self, paths: Paths, emit: Emit, daemon_info: dict[str, Any]):
        self.ctx = BackendContext(paths, emit, daemon_info)
        self.stopper = Stopper(self.ctx)
        self.loader = Loader(self.ctx, self.stopper)
        self.adoption = Adoption(self.ctx, self.loader)
        self.defaults = DefaultModel(self.ctx, self.loader, self.stopper)
        self.cache = CacheCommand(self.ctx)
        self.shutting_down = False
        self.finished = False
        self._last_watch = 0.0
        self._last_log_check = 0.0
        self._table: dict[type[p.Message], Callable[[Any], None]] = {
            p.Switch: lambda m: self.loader.switch(m.id, m.model, pin=m.pin, force=m.force,
                                                  fit=m.fit, fit_check=m.fit_check),
            p.Stop: lambda m: self.stop(m.id, idle_seconds=m.idle_seconds, force=m.force),
            p.Cache: lambda m: self.cache.handle(m.id, m.action, m.model),
            p.KvReuse: self.cache.reused,
            p.Status: lambda m: self.ctx.reply(m.id, True, backend=self.ctx.backend.to_dict(),
                                               rpc_workers=self.ctx.rpc.public()),
            p.Ensure: lambda m: self.defaults.ensure(m.id),
            p.ReloadConfig: lambda m: self.reload(),
            p.Shutdown: lambda m: self.shutdown(),
        }

    @property
    def proc(self) -> Any:
        """The llama-server process, loading or running (the worker's loop watches it)."""
        return self.ctx.proc

    def boot(self) -> list[str]:
        return self.adoption.boot()

    def first_boot_of_daemon(self) -> bool:
        return self.adoption.first_boot_of_daemon()

    def load_default_on_startup(self) -> None:
        self.defaults.load_on_startup()

    # --- messages -----------------------------------------------------------------------------

    def handle(self, message: p.Message) -> None:
        p.dispatch(self._table, message, "lifecycle worker", answer=self.ctx.emit)

    def reload(self) -> None:
        self.ctx.read_limits()
        self.ctx.default_failure = None  # the user asked for a fresh look

    def stop(self, rid: str, idle_seconds: float | None = None, force: bool = False) -> None:
        """Stop what runs. `idle_seconds`: an idle unload (the proxy saw no request for that
        long), recorded in the backend record so that the next request wakes this model.
        `force`: no KV-cache save, and one under way is cut."""
        ctx, stopper, loader = self.ctx, self.stopper, self.loader
        if stopper.stopping is not None:
            if force:
                stopper.cut_save()
            stopper.drop_plan("cancelled by a stop request")
            stopper.stopping.waiters.append(rid)
            return
        if loader.load is not None:
            model = loader.load.model
            loader.end("cancelled", "cancelled by a stop request")
            if stopper.stopping is not None:
                stopper.stopping.waiters.append(rid)
            else:  # the process had already exited
                ctx.reply(rid, True, stopped=model)
            return
        if ctx.proc is not None:
            stopping = stopper.begin([], force=force)
            stopping.waiters.append(rid)
            if idle_seconds is not None and stopping.model:
                log.info("unloading %s after %.0fs without requests", stopping.model,
                         idle_seconds)
                stopping.unloaded = {"model": stopping.model, "idle_seconds": idle_seconds,
                                     "at": time.time()}
            return
        ctx.reply(rid, True, stopped=None)

    def shutdown(self) -> None:
        self.shutting_down = True
        if self.stopper.stopping is not None:
            self.stopper.drop_plan("llmctld is shutting down")
        elif self.loader.load is not None:
            self.loader.end("cancelled", "llmctld is shutting down")
        elif self.ctx.proc is not None:
            self.stopper.begin([])
        self.finished = self.stopper.stopping is None

    # --- the loop's periodic work -------------------------------------------------------------

    def next_timeout(self) -> float:
        if self.stopper.stopping is not None:
            return STOP_POLL
        load = self.loader.load
        if load is None:
            return WATCH_POLL
        return EARLY_POLL if time.monotonic() - load.started < 1.0 else LOAD_POLL

    def tick(self, exited: bool = False) -> None:
        """The periodic work; `exited`: the loop saw llama-server exit (look now, not at the
        next liveness poll)."""
        now = time.monotonic()
        ctx = self.ctx
        if self.stopper.stopping is not None:
            done = self.stopper.step()
            if done is not None and self.shutting_down:
                self.finished = True
            elif done is not None and done.then is not None:
                self.loader.launch(done.then)
            if done is not None:
                self.cache.after_save()
        elif self.loader.load is not None:
            self.loader.check(now)
        elif ctx.proc is not None and (exited or now - self._last_watch >= WATCH_POLL):
            self._last_watch = now
            code = ctx.proc.exit_status()
            if code is not None:
                self._backend_died(code)
        rpc_guard.watch(ctx, self.stopper)
        if ctx.log_path is not None and now - self._last_log_check >= LOG_CHECK_EVERY:
            self._last_log_check = now
            bound_log(ctx.log_path, ctx.log_max)

    def _backend_died(self, code: int) -> None:
        ctx = self.ctx
        model = ctx.backend.model or "?"
        log.warning("llama-server for %s %s", model, describe_exit(code))
        tail = read_log_tail(ctx.log_path) if ctx.log_path else []
        ctx.proc = None
        gone = rpc_guard.missing_workers(ctx, ctx.backend.cmdline)  # the likely cause
        ctx.record_failure(model, f"llama-server for {model} {describe_exit(code)}" +
                           (f": {gone}" if gone else ""), code, tail)
