"""The proxy worker's mirror of the backend record (core.state.Backend), kept current by the
lifecycle worker's State broadcasts, and the change signal routes wait on.

Readers use attributes: `view.backend.state`, `view.backend.model`, ... (the fields are
declared once, in core.state). Never assign to the record here: only the lifecycle worker
changes the backend; this is a copy.
"""

from __future__ import annotations

from typing import Any

from gevent.event import Event

from llmctl.core.paths import Paths
from llmctl.core.state import Backend, read_state


class BackendView:
    def __init__(self, paths: Paths):
        self.backend = Backend()
        self._changed = Event()
        data, _ = read_state(paths.state_file)
        if data:  # serve at once from what the lifecycle worker last wrote
            self.backend = Backend.from_dict(data["backend"])

    def apply(self, record: dict[str, Any], only_newer: bool = False) -> None:
        """A State broadcast (or a Status reply) replaces the mirror: they arrive in the order
        the lifecycle worker sent them. `only_newer` for a record read out of turn."""
        backend = Backend.from_dict(record)
        if only_newer and backend.generation < self.backend.generation:
            return
        self.backend = backend
        self.notify()

    def notify(self) -> None:
        """Wake everyone in wait_for_change (a backend change, a reply, a released lease)."""
        changed, self._changed = self._changed, Event()
        changed.set()

    def wait_for_change(self, timeout: float) -> None:
        self._changed.wait(timeout)
