"""The proxy worker's view of the configuration: the global config, the model catalog, and the
Host/Origin guard built from them. `refresh()` re-reads all three (POST /reload, SIGHUP, and
the control routes that list models), so an edit of daemon.allowed_origins applies without a
proxy restart; the reading runs off the event loop (the proxy passes its threadpool).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from llmctl.core.catalog import Catalog, ModelEntry
from llmctl.core.config import ConfigError, GlobalConfig, load_global
from llmctl.core.paths import Paths
from llmctl.daemon.admission.client_limits import ClientLimits
from llmctl.daemon.api.security import Guard
from llmctl.daemon.backend import starter
from llmctl.daemon.backend.catalog_memo import discover_cached

Offload = Callable[[Callable[[], Any]], Any]  # run a function elsewhere, wait for its result


def inline(fn: Callable[[], Any]) -> Any:
    return fn()


class ConfigView:
    def __init__(self, paths: Paths, daemon_info: dict[str, Any], config: GlobalConfig,
                 offload: Offload = inline):
        self.paths = paths
        # where the reading and scanning runs: the proxy worker passes its gevent threadpool,
        # so a slow disk (or a thousand config files) never stalls the streams on its loop
        self.offload = offload
        self._lock = threading.Lock()  # one refresh at a time (cooperative under gevent)
        self.bound_host: str = daemon_info["host"]
        self.bound_port: int = daemon_info["port"]
        # The configuration llmctld validated at start-up: a worker restarted after the file
        # was broken by an edit still boots, and reports the error.
        self.config = self._effective(config)
        self.config_error: str | None = None
        self.catalog = Catalog()
        self.guard = self._guard()
        self.refresh()

    def refresh(self) -> None:
        """Re-read the global config (keeping the last good one if it is now broken), rebuild
        the guard and re-discover models. Control routes call it freely: the catalog is
        made again only when a file it came from changed (backend/catalog_memo.py), and all the
        reading runs through `offload` (off the proxy's event loop). One refresh at a time;
        one that arrives meanwhile waits and then looks again, so an edit made before a
        route was called is always seen by it."""
        with self._lock:
            config, config_error, catalog = self.offload(self._read)
            if config is not None:
                self.config = config
                self.guard = self._guard()
            self.config_error = config_error
            if catalog is not None:
                self.catalog = catalog

    def _read(self) -> tuple[GlobalConfig | None, str | None, Catalog | None]:
        """The new config (None: keep the last good one), the error to report, the new
        catalog (None: keep it). Touches nothing of self but reads: it may run in a
        thread."""
        config, error = None, None
        try:
            config = self._effective(load_global(self.paths.config_file))
        except ConfigError as e:
            error = f"{e} (still using the previous configuration)"
        try:
            catalog = discover_cached(self.paths.models_dir, config or self.config,
                                      self.paths.header_cache)
        except ConfigError as e:
            return config, str(e), None
        return config, error, catalog

    def _effective(self, config: GlobalConfig) -> GlobalConfig:
        """`config` with daemon.host and daemon.port set to where llmctld really listens: the
        file's values lose to --host/--port and LLMCTL_HOST/LLMCTL_PORT, and an edit of them
        applies only at the next start, so what the file says would mislead `llmctl inspect`
        and every model config merged from this one."""
        config.data["daemon"].update(host=self.bound_host, port=self.bound_port)
        return config

    def _guard(self) -> Guard:
        daemon = self.config.data["daemon"]
        return Guard(self.bound_host, daemon["allowed_origins"], daemon["allow_remote"],
                     daemon["allow_browser_pull"])

    @property
    def limits(self) -> ClientLimits:
        """What one client may hold (daemon.header_timeout, max_body, ...), for the config in
        force: made once per config object (a refresh replaces it)."""
        cached = self._limits
        if cached is None or cached[0] is not self.config:
            cached = self._limits = (self.config, ClientLimits.of(self.config))
        return cached[1]

    _limits: tuple[GlobalConfig, ClientLimits] | None = None

    @property
    def default_model(self) -> str | None:
        return starter.default_model(self.config, self.catalog)

    @property
    def ready_timeout(self) -> float:
        return self.config.data["server"]["readyTimeoutMs"] / 1000

    def entry(self, model_id: str | None) -> ModelEntry | None:
        return self.catalog.by_id(model_id) if model_id else None
