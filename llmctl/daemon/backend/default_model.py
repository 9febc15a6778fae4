"""The one place that decides to load a model nobody named: on Ensure (a proxied request found
nothing loaded) and at start-up (daemon.load_default_on_startup).

Ensure wakes the model an idle unload stopped (backend.unloaded), else loads
daemon.default_model (or the starter). When that default load fails, further Ensures are
refused with the same error, without a new attempt, until the configuration or the model's
files change (catalog.signature), an explicit switch or reload happens, or
DEFAULT_RETRY_AFTER passed (context.py remembers the failure).
"""

from __future__ import annotations

import logging
import time

from llmctl.core.config import ConfigError, load_global
from llmctl.daemon.backend import catalog
from llmctl.daemon.backend.context import BackendContext
from llmctl.daemon.backend.loading import Loader
from llmctl.daemon.backend.stopping import Stopper

log = logging.getLogger("llmctld.lifecycle")

STARTUP_ID = "startup"  # the command id of the start-up load: nobody waits for its reply


class DefaultModel:
    def __init__(self, ctx: BackendContext, loader: Loader, stopper: Stopper):
        self.ctx, self.loader, self.stopper = ctx, loader, stopper

    def ensure(self, rid: str) -> None:
        ctx, load, stopping = self.ctx, self.loader.load, self.stopper.stopping
        if ctx.backend.state == "ready" and load is None and stopping is None:
            ctx.reply(rid, True, model=ctx.backend.model, already_active=True)
            return
        if load is not None:
            load.waiters.append(rid)
            return
        if stopping is not None and stopping.then is not None:
            stopping.then.waiters.append(rid)
            return
        unloaded = ctx.backend.unloaded if ctx.backend.state == "stopped" else None
        if unloaded and ctx.proc is None:
            log.info("waking %s (unloaded after %.0fs idle) for a waiting request",
                     unloaded["model"], unloaded["idle_seconds"])
            self.loader.switch(rid, unloaded["model"])
            return
        try:
            model = catalog.default_model(ctx.paths)
        except ConfigError as e:
            ctx.refuse([rid], "config_error", str(e))
            return
        if not model:
            ctx.refuse([rid], "no_model", self._idle_message())
            return
        failed = ctx.default_failure
        if failed is not None and failed.model == model and \
                failed.signature == catalog.signature(ctx.paths, model) and \
                time.monotonic() < failed.retry_at:
            ctx.refuse([rid], "default_model_failed", failed.message, model=model,
                       retry_in=round(failed.retry_at - time.monotonic()))
            return
        log.info("loading the default model %s (asked by %s)", model,
                 "start-up" if rid == STARTUP_ID else "a waiting request")
        self.loader.switch(rid, model, default=True)

    def load_on_startup(self) -> None:
        """daemon.load_default_on_startup: the same path as a request's Ensure."""
        try:
            daemon_cfg = load_global(self.ctx.paths.config_file).data["daemon"]
        except ConfigError:
            return
        if daemon_cfg["load_default_on_startup"] and self.ctx.proc is None and \
                catalog.default_model(self.ctx.paths):
            log.info("daemon.load_default_on_startup is set")
            self.ensure(STARTUP_ID)

    def _idle_message(self) -> str:
        backend = self.ctx.backend
        if backend.state == "failed" and backend.error:
            return (f"no model is loaded: the last one failed ({backend.error}). "
                    "Run `llmctl switch <model>`, or set daemon.default_model to load one "
                    "on demand")
        return ("no model is loaded. Run `llmctl switch <model>` (see `llmctl models`), or set "
                "daemon.default_model in config/default.yaml to load one on the first request")
