"""What `llmctl inspect` shows of a model's KV cache, read-only (the proxy worker): whether it
is kept and why, and its saves. The running backend's record is the authority for the model
it runs (its fingerprint is known); for the others the policy is worked out from the config,
with what the store learned of their restores."""

from __future__ import annotations

import time
from typing import Any

from llmctl.core.paths import Paths
from llmctl.daemon.kvcache.policy import decide
from llmctl.daemon.kvcache.store import KvStore


def kv_view(paths: Paths, entry: Any, backend: Any) -> dict[str, Any]:
    store = KvStore(paths.kv_dir)
    model = str(entry.id)
    if backend.model == model and backend.active and backend.kv:
        kept, reason = bool(backend.kv.get("kept")), str(backend.kv.get("reason"))
        swa_full = bool(backend.kv.get("swa_full"))
    else:
        decision = decide(entry.config, entry.model_path, store.any_off_reason(model))
        kept, reason, swa_full = decision.keep, decision.reason, decision.swa_full
    now = time.time()
    saved = [{"fingerprint": s.fingerprint, "tokens": s.tokens, "bytes": s.bytes,
              "age_s": round(now - s.saved_at, 1)} for s in store.entries(model)] \
        if (paths.kv_dir / model).is_dir() else []
    return {"kept": kept, "reason": reason, "swa_full": swa_full, "saved": saved}
