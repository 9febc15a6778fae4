"""The proxy worker's view of the configuration: the global config, the model catalog, and the
Host/Origin guard built from them. `refresh()` re-reads all three (POST /reload, SIGHUP, and
the control routes that list models), so an edit of daemon.allowed_origins applies without a
proxy restart.
"""

from __future__ import annotations

from typing import Any

from llmctl.core.catalog import Catalog, ModelEntry
from llmctl.core.config import ConfigError, GlobalConfig, load_global
from llmctl.core.discovery import discover
from llmctl.core.paths import Paths
from llmctl.daemon.admission.client_limits import ClientLimits
from llmctl.daemon.api.security import Guard
from llmctl.daemon.backend import starter


class ConfigView:
    def __init__(self, paths: Paths, daemon_info: dict[str, Any], config: GlobalConfig):
        self.paths = paths
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
        the guard and re-discover models. Cheap (a few small YAML files), so control routes
        call it freely."""
        try:
            self.config = self._effective(load_global(self.paths.config_file))
            self.config_error = None
            self.guard = self._guard()
        except ConfigError as e:
            self.config_error = f"{e} (still using the previous configuration)"
        try:
            self.catalog = discover(self.paths.models_dir, self.config,
                                    self.paths.header_cache)
        except ConfigError as e:
            self.config_error = str(e)

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
