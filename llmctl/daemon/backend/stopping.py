"""Stopping llama-server: the `stopping` phase, from SIGTERM to the process's end, and what
that end answers (the Stop commands, a load's failure or cancellation) or starts (the switch
planned for afterwards, `Stopping.then`).

The loop never waits for the process: `step()` is called each tick and returns the finished
phase once the process is gone (process.Termination: SIGTERM, a second SIGTERM after 1 s,
SIGKILL at server.stopTimeoutMs).

A ready backend whose KV cache is kept is saved first (daemon/kvcache/: a job in a thread,
bounded by cache.save_timeout) and signalled once the save answered or ran out of time; a
forced stop skips the save, and one that comes during a save cuts it (`cut_save`).
"""

from __future__ import annotations

import logging
import time

from llmctl.core.exits import describe_exit
from llmctl.daemon.backend.context import BackendContext
from llmctl.daemon.backend.phases import Stopping
from llmctl.daemon.backend.process import Termination

log = logging.getLogger("llmctld.lifecycle")


class Stopper:
    def __init__(self, ctx: BackendContext):
        self.ctx = ctx
        self.stopping: Stopping | None = None

    def begin(self, rids: list[str], reason: str | None = None,
              force: bool = False) -> Stopping:
        """Start stopping the running llama-server; `rids` hear a `stopping` event. Unless
        `force`d, a ready backend's KV cache is saved first."""
        ctx = self.ctx
        assert ctx.proc is not None
        backend = ctx.backend
        model = backend.model
        log.info("stopping %s (llama-server pid %d)", model, ctx.proc.pid)
        ctx.event(rids, "stopping", model=model, **({"reason": reason} if reason else {}))
        save = None if force or backend.state != "ready" else ctx.kv.begin_save(
            model, backend.kv, backend.host, backend.port)
        backend.transition("stopping")
        self.stopping = Stopping(None, model, save=save)
        if save is None:
            self.stopping.termination = Termination(ctx.proc, ctx.stop_grace)
        else:
            backend.progress = {"phase": "saving", "percent": None}
        ctx.changed(write=False)
        return self.stopping

    def cut_save(self) -> None:
        """A forced stop or switch arrived during the save: signal the process now."""
        stopping = self.stopping
        if stopping is not None and stopping.save is not None:
            log.info("a forced stop cuts the KV-cache save of %s", stopping.model)
            self._end_save(stopping, cut=True)

    def _end_save(self, stopping: Stopping, cut: bool = False) -> None:
        assert stopping.save is not None and self.ctx.proc is not None
        stopping.kv = self.ctx.kv.finish_save(stopping.save, cut)
        stopping.save = None
        stopping.termination = Termination(self.ctx.proc, self.ctx.stop_grace)

    def drop_plan(self, why: str) -> None:
        """The switch planned for after this stop will not happen: tell its clients."""
        assert self.stopping is not None
        plan, self.stopping.then = self.stopping.then, None
        if plan is not None:
            self.ctx.refuse(plan.waiters, "cancelled", why, model=plan.model)

    def step(self) -> Stopping | None:
        """One look at the stopping process: the finished phase once it is gone (recorded
        and answered), else None."""
        stopping, ctx = self.stopping, self.ctx
        assert stopping is not None
        if stopping.save is not None:
            if not stopping.save.finished(time.monotonic()):
                return None
            self._end_save(stopping)
        assert stopping.termination is not None
        if not stopping.termination.step():
            return None
        self.stopping, ctx.proc = None, None
        ctx.kv.after_stop(stopping.model)
        failure = stopping.failure
        exit_code = stopping.termination.exit_code
        if failure is not None and failure.code == "load_stalled":  # say how it ended
            failure.message += f"; llama-server {describe_exit(exit_code)}"
        if failure is not None:
            tail = failure.tail if failure.tail is not None else []
            ctx.record_failure(failure.model, failure.message, exit_code, tail, changed=False)
        else:
            ctx.backend.transition("stopped", unloaded=stopping.unloaded, kv=stopping.kv)
        ctx.changed()
        if failure is not None:
            ctx.refuse(failure.waiters, failure.code, failure.message, model=failure.model,
                       default=failure.model if failure.default else None,
                       exit_code=exit_code, log_tail=failure.tail)
        for rids, why in stopping.cancelled:
            ctx.refuse(rids, "cancelled", why, model=stopping.model)
        for rid in stopping.waiters:
            ctx.reply(rid, True, stopped=stopping.model)
        return stopping
