"""The idle clock of the running model: when it is due for an idle unload (daemon.idle_unload,
a model's own `idle_unload`, `llmctl switch --pin`, a request's keep-alive).

The proxy worker keeps this clock because only it sees requests: it unloads through the same
gate as `llmctl stop`, and only while no request holds the backend, so an idle unload can never
cut a request; one that arrives meanwhile waits and wakes the model again.

Idle time counts from the end of the last request (a stream longer than the timeout is never
idle). A per-request keep-alive (for clients that send one, e.g. Ollama's `keep_alive`)
replaces the configured timeout for this model until the model changes:

- `touch(now, keep_alive=300.0)`: unload 300 s after the requests end;
- `touch(now, keep_alive=0.0)`: unload as soon as the requests end;
- `touch(now, keep_alive=PIN)`: never unload (like `llmctl switch --pin`).

Pure: the caller passes the time; this module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

PIN = float("inf")  # a keep-alive that never ends


@dataclass
class IdleClock:
    model: str | None = None
    last_activity: float = 0.0
    keep_alive: float | None = None  # a request's keep-alive, replacing the configured timeout

    def reset(self, model: str | None, now: float) -> None:
        """A model became current (loaded, adopted, or the proxy restarted): idle from now."""
        if model != self.model:
            self.keep_alive = None
        self.model, self.last_activity = model, now

    def touch(self, now: float, keep_alive: float | None = None,
              model: str | None = None) -> None:
        """A request (for `model`, when known) started or ended. `keep_alive` (seconds, 0, or
        PIN) overrides the configured timeout from now on; None keeps what is in force."""
        if model is not None and model != self.model:
            self.reset(model, now)
        self.last_activity = now
        if keep_alive is not None:
            self.keep_alive = keep_alive

    def timeout(self, configured: float | None, pinned: bool) -> float | None:
        """The idle timeout in force: None means never."""
        if pinned:
            return None
        if self.keep_alive is not None:
            return None if self.keep_alive == PIN else self.keep_alive
        return configured

    def due_at(self, configured: float | None, pinned: bool) -> float | None:
        """When the model is to be unloaded if nothing happens; None: never."""
        timeout = self.timeout(configured, pinned)
        return None if timeout is None or self.model is None else self.last_activity + timeout
