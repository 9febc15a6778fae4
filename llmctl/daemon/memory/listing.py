"""The proxy worker's memory view: the `memory` object of every listed model (GET /models and
/models/<id>, hence `llmctl models` and `inspect`, the dashboard, Pi's picker, Ollama's
/api/ps), read from the estimator's cache and judged against what is free now.

A listing never waits for an estimate. A launch with no record yet is shown as
`{"state": "pending"}` and queued for one background greenlet that works through the queue
one launch at a time: llama-fit-params runs as a child through gevent's cooperative
subprocess (the proxy worker is monkey-patched), so neither the loop nor a request waits for
it, and at most one estimator runs per proxy, bounded by its timeout. The record it writes is
the one the lifecycle worker reads before a load, so a model listed once is checked there
without running anything.

The job lives in the proxy rather than the lifecycle worker because the proxy is what sees
the listings and the catalog they come from; the lifecycle worker would need a new message
to hear of them, and its loop must stay free for the backend it supervises. Free memory is
read at most once a second however many models a listing has.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmctl.core.catalog import ModelEntry
from llmctl.core.paths import Paths
from llmctl.daemon.backend import llama_server
from llmctl.daemon.backend.catalog_memo import stamp
from llmctl.daemon.kvcache.policy import decide as kv_decide
from llmctl.daemon.memory.check import budget_for, decide, fields
from llmctl.daemon.memory.estimator import Estimator, Launch, memory_cache
from llmctl.daemon.memory.free import Free, FreeMemory, released_by
from llmctl.daemon.memory.needs import Needs

log = logging.getLogger("llmctld.proxy")

QUEUE_MAX = 1024  # launches waiting for an estimate; more are queued by a later listing
FREE_EVERY = 1.0  # seconds a reading of free memory is reused
LAUNCHES_KEPT = 4096  # models whose launch is kept (see _launch)

Spawn = Callable[[Callable[[], None]], Any]


class MemoryListing:
    def __init__(self, paths: Paths, running_pid: Callable[[], int | None], spawn: Spawn,
                 free: FreeMemory | None = None):
        self.paths = paths
        self.estimator = Estimator(memory_cache(paths))
        self.running_pid = running_pid  # the llama-server a load would replace
        self.spawn = spawn
        self.free = free or FreeMemory()
        self._queue: OrderedDict[str, tuple[Launch, list[str] | None]] = OrderedDict()
        self._filling = False
        self._free: tuple[float, Free, int] | None = None
        self._launches: dict[str, tuple[Any, ...]] = {}  # by model id, see _launch

    def field(self, entry: ModelEntry) -> dict[str, Any] | None:
        """The entry's `memory` object; None for a model that cannot be loaded anyway."""
        if not entry.available or entry.config is None or entry.model_path is None or \
                entry.id is None:
            return None
        cfg = entry.config
        made = self._launch(entry)
        if isinstance(made, str):
            return {"state": "failed", "error": made}
        launch, caps, key, fit_argv = made
        record = self.estimator.lookup(key)
        if record is None:
            self._enqueue(key, launch, fit_argv)
            return {"state": "pending"}
        if record.needs is None:
            return {"state": "failed", "error": record.error}
        free, released = self._free_now()
        return fields(record.needs, decide(record.needs, budget_for(cfg, caps, free, released)))

    def _launch(self, entry: ModelEntry) -> str | tuple[Launch, Any, str, list[str] | None]:
        """The launch a load of `entry` would make (argv, capabilities, the estimator's key),
        or why there is none. Kept per model while its merged config is equal and the stats
        of its files and of the binary are the same, so a listing of a thousand models
        compares a dict and stats a few files per model instead of reading every GGUF header
        (the KV policy) and building every argv again (~0.5 ms a model, on the proxy's
        loop)."""
        kept = self._launches.get(entry.id or "")
        files = (entry.model_path, entry.mmproj_path, entry.draft_path, *entry.shards)
        if kept is not None and kept[0] == entry.config and \
                kept[1] == tuple(stamp(f) for f in files if f is not None) and \
                stamp(kept[2]) == kept[3]:
            return kept[4]
        cfg = entry.config
        assert cfg is not None and entry.model_path is not None and entry.id is not None
        try:
            binary = llama_server.find_binary(cfg["server"]["binary"])
            caps = llama_server.detect(binary)
            # the KV store's flags too (--swa-full changes the memory a launch needs)
            kv = kv_decide(cfg, entry.model_path)
            argv = llama_server.build_argv(binary, caps, cfg, entry.model_path,
                                           self.paths.kv_dir / entry.id if kv.keep else None,
                                           kv.swa_full)
        except llama_server.BackendSetupError as e:
            return str(e)
        launch = Launch.of(entry.id, cfg, entry, argv)
        key, fit_argv = self.estimator.key(launch)
        made = (launch, caps, key, fit_argv)
        self._launches.pop(entry.id, None)
        self._launches[entry.id] = (entry.config, tuple(stamp(f) for f in files if f is not None),
                                    Path(binary), stamp(Path(binary)), made)
        while len(self._launches) > LAUNCHES_KEPT:  # entries of catalogs long replaced
            self._launches.pop(next(iter(self._launches)))
        return made

    def needs(self, entry: ModelEntry) -> Needs | None:
        """The figures alone, when known (for Ollama's sizes)."""
        memory = self.field(entry)
        if not memory or memory.get("state") != "known":
            return None
        return Needs.from_dict(memory)

    def _free_now(self) -> tuple[Free, int]:
        """Free memory, and what the running model would give back: read once a second."""
        now = time.monotonic()
        if self._free is None or now - self._free[0] >= FREE_EVERY:
            self._free = (now, self.free.now(), released_by(self.running_pid()))
        return self._free[1], self._free[2]

    # --- the background job -------------------------------------------------------------------

    def _enqueue(self, key: str, launch: Launch, fit_argv: list[str] | None) -> None:
        if key in self._queue or len(self._queue) >= QUEUE_MAX:
            return
        self._queue[key] = (launch, fit_argv)
        if not self._filling:
            self._filling = True
            self.spawn(self._fill)

    def _fill(self) -> None:
        try:
            while self._queue:
                key, (launch, fit_argv) = next(iter(self._queue.items()))
                try:
                    self.estimator.compute(launch, key, fit_argv)
                except Exception:  # a bug here must not stop the estimates for good
                    log.exception("estimating the memory of %s failed", launch.model)
                finally:
                    self._queue.pop(key, None)
        finally:
            self._filling = False
