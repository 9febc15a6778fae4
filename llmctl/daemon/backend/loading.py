"""Switching and loading: from a Switch command to a ready llama-server, or to a failure.

- A switch while a backend runs: stop it (stopping.py), then start the new one (the `Plan`).
  Another switch meanwhile replaces the plan (the first gets `cancelled`); a stop drops it.
- A switch during a load supersedes it; a switch to the model that runs with the same argv
  is answered at once (`already_active`), with a changed config it restarts the model.
- A load is a phase the loop ticks through (`check()`): the process's exit is a failure with
  its log tail; /health 200 is ready; past server.readyTimeoutMs, or stalled (stall.py), the
  process is stopped and the load fails. Progress events come from the bytes read of the GGUF.
- Once /health answers, a saved KV cache of this model and fingerprint is restored before
  the backend is reported ready (phase `restoring`, daemon/kvcache/), so the requests held
  for the load find their prefix. A failed restore is dropped; the model is ready anyway.
- Before a switch stops or spawns anything, daemon/memory/ judges whether the launch fits in
  free memory (`insufficient_memory` when not; `fit` applies what would, `fit_check=False`
  skips it).
"""

from __future__ import annotations

import logging
import os
import time

from llmctl.core.config import ConfigError
from llmctl.core.exits import describe_exit
from llmctl.core.log_file import file_size, open_for_start, read_log_tail
from llmctl.daemon.backend import catalog, llama_server, rpc_guard
from llmctl.daemon.backend.context import BackendContext
from llmctl.daemon.backend.phases import Failure, Load, Plan
from llmctl.daemon.backend.process import (
    OWNER_ENV,
    BackendProcess,
    health,
    port_in_use,
    stop_owned_orphans,
)
from llmctl.daemon.backend.stall import StallDetector
from llmctl.daemon.backend.stopping import Stopper
from llmctl.daemon.memory.estimator import memory_cache
from llmctl.daemon.memory.preload import PreloadCheck

log = logging.getLogger("llmctld.lifecycle")

PROGRESS_EVERY = 0.1  # at most this often a progress event


class Loader:
    def __init__(self, ctx: BackendContext, stopper: Stopper):
        self.ctx, self.stopper = ctx, stopper
        self.load: Load | None = None
        self.memory = PreloadCheck(memory_cache(ctx.paths))

    # --- switch --------------------------------------------------------------------------------

    def switch(self, rid: str, model_id: str, default: bool = False, pin: bool = False,
               force: bool = False, fit: bool = False, fit_check: bool = True) -> None:
        ctx = self.ctx
        if not default:
            ctx.default_failure = None  # an explicit switch: the user is on it
        as_default = model_id if default else None
        try:
            cfg, entry, global_cfg = catalog.lookup(ctx.paths, model_id)
        except LookupError as e:
            ctx.refuse([rid], "not_found", str(e), default=as_default)
            return
        except ConfigError as e:
            ctx.refuse([rid], "config_error", str(e), default=as_default)
            return
        ctx.apply_limits(global_cfg)
        if entry.error:
            ctx.refuse([rid], "unavailable", f"{model_id} is unavailable: {entry.error}",
                       default=as_default)
            return
        if self.load is not None and self.load.model == model_id:
            self.load.pin = self.load.pin or pin
            self.load.waiters.append(rid)
            ctx.event([rid], "starting", model=model_id)
            return
        stopping = self.stopper.stopping
        pending = stopping.then if stopping is not None else None
        if pending is not None and pending.model == model_id:
            pending.pin = pending.pin or pin
            pending.waiters.append(rid)
            return
        assert entry.model_path is not None
        try:
            binary = llama_server.find_binary(cfg["server"]["binary"])
            caps = llama_server.detect(binary)  # cached per binary (path, size, mtime)
            kv = ctx.kv.plan(model_id, cfg, entry.model_path)
            argv = llama_server.build_argv(binary, caps, cfg, entry.model_path, kv.save_dir,
                                           kv.decision.swa_full)
            ctx.kv.seal(kv, argv, cfg, entry.model_path)
        except llama_server.BackendSetupError as e:
            if ctx.proc is None and stopping is None:
                # never drop a serving model for a switch that cannot start
                ctx.record_failure(model_id, str(e), None, [])
            ctx.refuse([rid], "backend_setup", str(e), model=model_id, default=as_default)
            return
        if (why := rpc_guard.refuse_switch(ctx, model_id, cfg)) is not None:
            # not remembered as a failed default: the next request looks again, cheaply
            ctx.refuse([rid], "unavailable", why, model=model_id)
            return
        # before anything is stopped or spawned: does it fit? (daemon/memory/preload.py)
        path = entry.model_path
        admitted = self.memory.admit(
            model_id, cfg, entry, argv, (ctx.proc.pid, ctx.backend.cmdline or []) if ctx.proc
            else None, caps, lambda c: llama_server.build_argv(binary, caps, c, path, kv.save_dir,
                                                              kv.decision.swa_full),
            check=fit_check, fit=fit)
        if admitted.argv is None:
            ctx.refuse([rid], "insufficient_memory", admitted.refusal or "", model=model_id,
                       default=as_default, memory=admitted.memory)
            return
        if admitted.fitted:
            ctx.event([rid], "fitted", model=model_id, **admitted.fitted)
            ctx.kv.seal(kv, admitted.argv, cfg, entry.model_path)  # a fitted context: its own
        argv = admitted.argv
        reason = None
        if ctx.backend.state == "ready" and ctx.backend.model == model_id and \
                ctx.proc is not None and ctx.proc.exit_status() is None:
            if argv == ctx.backend.cmdline:
                if ctx.backend.pinned != pin:  # a plain switch unpins, --pin pins
                    ctx.backend.pinned = pin
                    ctx.changed()
                ctx.reply(rid, True, event="ready", model=model_id,
                          load_seconds=ctx.backend.load_seconds, already_active=True)
                return
            # Asked for the model that runs, whose config has changed since: apply it.
            reason = "its configuration changed"
            log.info("restarting %s: %s", model_id, reason)
        plan = Plan(model_id, cfg, entry.model_path, argv, [rid], default, pin, kv)
        if self.load is not None:
            self.end("cancelled", f"superseded by a switch to {model_id}")
        stopping = self.stopper.stopping
        if stopping is not None and force:
            self.stopper.cut_save()
        if stopping is not None:
            if stopping.then is not None:
                old = stopping.then
                ctx.refuse(old.waiters, "cancelled", f"superseded by a switch to {model_id}",
                           model=old.model)
            stopping.then = plan
            log.info("the switch to %s waits for %s to stop", model_id, stopping.model)
            ctx.event([rid], "stopping", model=stopping.model)
            return
        if ctx.proc is not None:
            self.stopper.begin([rid], reason, force).then = plan
            return
        self.launch(plan)

    def launch(self, plan: Plan) -> None:
        """Spawn llama-server for the plan: the load begins."""
        ctx = self.ctx
        host, port = plan.cfg["server"]["host"], plan.cfg["server"]["port"]
        if port_in_use(host, port):
            # a worker killed right after a spawn, before the record, may have left one of
            # ours there (its marker was not yet visible to this worker's boot scan)
            keep = {ctx.proc.pid} if ctx.proc else set()
            for note in stop_owned_orphans(ctx.paths.runtime, keep | {os.getpid()},
                                           ctx.stop_grace):
                log.warning(note)
        if port_in_use(host, port):
            message = (f"port {port} on {host} is already in use by another program, so "
                       "llama-server could not listen there; stop that program or set "
                       "server.port in config/default.yaml")
            ctx.record_failure(plan.model, message, None, [])
            ctx.refuse(plan.waiters, "port_in_use", message, model=plan.model,
                       default=plan.model if plan.default else None)
            return
        model_id, argv = plan.model, plan.argv
        log_path = ctx.paths.log_file(model_id)
        offset = open_for_start(log_path, ctx.log_max,
                                f"starting {model_id}: {' '.join(argv)}")
        env = llama_server.clean_env(os.environ)
        env[OWNER_ENV] = str(ctx.paths.runtime)
        ctx.event(plan.waiters, "starting", model=model_id)
        try:
            proc = BackendProcess.spawn(argv, log_path, env)
        except OSError as e:
            message = f"could not start {argv[0]}: {e.strerror}"
            ctx.record_failure(model_id, message, None, [])
            ctx.refuse(plan.waiters, "backend_setup", message, model=model_id,
                       default=plan.model if plan.default else None)
            return
        now = time.monotonic()
        log.info("starting %s (llama-server pid %d, log %s)", model_id, proc.pid, log_path)
        ctx.proc, ctx.log_path = proc, log_path
        if plan.kv is not None:
            ctx.kv.launching(plan.kv)
        self.load = Load(model=model_id, model_path=plan.model_path, proc=proc,
                         log_path=log_path, log_offset=offset, started=now,
                         deadline=now + plan.cfg["server"]["readyTimeoutMs"] / 1000,
                         waiters=list(plan.waiters), model_size=file_size(plan.model_path),
                         reads_file=not plan.cfg["llama"]["mmap"], default=plan.default,
                         pin=plan.pin,
                         stall=StallDetector(plan.cfg["server"]["stallTimeoutMs"] / 1000),
                         kv=plan.kv)
        ctx.backend.transition(
            "starting", model=model_id, host=host, port=port, model_path=str(plan.model_path),
            started_at=time.time(), progress={"phase": "spawning", "percent": 0.0 if
                                              self.load.reads_file else None},
            pid=proc.pid, create_time=proc.create_time, cmdline=proc.cmdline,
            kv=plan.kv.record() if plan.kv is not None else None)
        ctx.changed()

    # --- the load, tick by tick ----------------------------------------------------------------

    def check(self, now: float) -> None:
        load, ctx = self.load, self.ctx
        assert load is not None
        code = load.proc.exit_status()
        if code is not None:
            tail = read_log_tail(load.log_path, load.log_offset)
            if (gone := rpc_guard.missing_workers(ctx, ctx.backend.cmdline)) is not None:
                self.end("unavailable", f"llama-server {describe_exit(code)} while loading "
                         f"{load.model}: {gone}", exit_code=code, tail=tail)
                return
            hint = llama_server.diagnose(tail)
            self.end("load_failed", f"llama-server {describe_exit(code)} while loading "
                     f"{load.model}" + (f": {hint}" if hint else ""), exit_code=code, tail=tail)
            return
        if load.restore is not None:
            if load.restore.finished(now):
                self._ready(load, now)
            return
        host, port = ctx.backend.host or "", ctx.backend.port or 0
        status = health(host, port, timeout=0.5)
        if status == 200:
            if load.kv is not None:
                load.restore = ctx.kv.begin_restore(load.kv, host, port)
            if load.restore is None:
                self._ready(load, now)
            else:
                self._progress(load, "restoring", None, now)
            return
        if now > load.deadline:
            tail = read_log_tail(load.log_path, load.log_offset)
            seconds = now - load.started
            self.end("load_timeout", f"{load.model} was not ready after {seconds:.0f}s "
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
            self.end("load_stalled", f"loading {load.model} {stalled}",
                     tail=read_log_tail(load.log_path, load.log_offset))
            return
        if (phase, percent) != (load.phase, load.percent) and \
                now - load.last_progress >= PROGRESS_EVERY:
            self._progress(load, phase, percent, now)

    def _progress(self, load: Load, phase: str, percent: float | None, now: float) -> None:
        ctx = self.ctx
        load.phase, load.percent, load.last_progress = phase, percent, now
        ctx.backend.progress = {"phase": phase, "percent": percent}
        ctx.event(load.waiters, "progress", model=load.model, phase=phase, percent=percent)
        ctx.changed(write=False)

    def _ready(self, load: Load, now: float) -> None:
        ctx = self.ctx
        seconds = round(now - load.started, 3)
        log.info("%s is ready (loaded in %.2fs)", load.model, seconds)
        self.load = None
        if load.default:
            ctx.default_failure = None
        kv = ctx.backend.kv
        if load.restore is not None and load.kv is not None:
            kv = load.kv.record(**ctx.kv.finish_restore(load.restore))
        ctx.backend.transition("ready", ready_at=time.time(), load_seconds=seconds,
                               progress=None, error=None, pinned=load.pin, kv=kv)
        ctx.changed()
        for rid in load.waiters:
            ctx.reply(rid, True, event="ready", model=load.model, load_seconds=seconds,
                      already_active=False)

    def end(self, code: str, message: str, *, exit_code: int | None = None,
            tail: list[str] | None = None) -> None:
        """A load ends without a ready backend. If the process still runs it is stopped
        first (a stopping phase) and its waiters are answered once it is gone."""
        load, ctx = self.load, self.ctx
        assert load is not None
        log.warning("loading %s failed: %s", load.model, message)
        self.load = None
        if load.proc.exit_status() is None:
            stopping = self.stopper.begin([])
            if code == "cancelled":
                stopping.cancelled.append((load.waiters, message))
            else:
                stopping.failure = Failure(code, message, load.model, load.waiters, tail,
                                           load.default)
            return
        ctx.proc = None
        tail = tail if tail is not None else read_log_tail(load.log_path, load.log_offset)
        if code == "cancelled":
            ctx.backend.transition("stopped")
        else:
            ctx.record_failure(load.model, message, exit_code, tail, changed=False)
        ctx.changed()
        ctx.refuse(load.waiters, code, message, model=load.model,
                   default=load.model if load.default else None,
                   exit_code=exit_code, log_tail=tail)
