"""Verify, don't assume: what the first request after a KV-cache restore really reused.

llama-server reports it in the response's own `timings.cache_n` (the prompt tokens taken
from the cache), which the observer already reads from the response's last bytes without
holding the stream. The first finished request of a backend whose record says it restored
tokens (`Backend.kv.restored_tokens`) is the proof: its figures go to the lifecycle worker
(a KvReuse notice: a model whose restores keep reusing nothing stops being saved), to the
metrics and to that request's activity entry. One report per load (model, ready_at).
"""

from __future__ import annotations

from typing import Any

from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.channel import ChannelClosed


class ReuseWatch:
    def __init__(self, hub: Any):
        self.hub = hub
        self._reported: tuple[Any, Any] | None = None

    def seen(self, figures: Any) -> dict[str, int] | None:
        """Called for each finished request with its token figures; the restored and reused
        counts for the one that proves (or disproves) a restore, else None."""
        backend = self.hub.backend.backend
        kv = backend.kv
        if not kv or not kv.get("restored_tokens") or figures.prompt is None:
            return None
        key = (backend.model, backend.ready_at)
        if key == self._reported or kv.get("reused_tokens") is not None:
            return None
        self._reported = key
        restored, reused = int(kv["restored_tokens"]), int(figures.cached or 0)
        try:
            self.hub.channel.post(p.KvReuse(str(backend.model), str(kv.get("fingerprint")),
                                            restored, reused))
        except ChannelClosed:  # the worker is stopping; the figures below still count
            pass
        return {"restored": restored, "reused": reused, "prompt": int(figures.prompt)}
