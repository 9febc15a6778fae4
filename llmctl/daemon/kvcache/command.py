"""The lifecycle worker's side of `llmctl cache` and of reuse verification:

- `Cache(list)`: every saved KV cache, with whether it still matches what its model would be
  launched with now (the fingerprint of the argv a switch would build);
- `Cache(clear, model)`: remove the saves (all, or one model's) and what was learned about
  their restores. A clear that arrives while a save runs waits for the save's end, so it can
  never race the rename of what was being saved;
- `KvReuse`: the proxy saw what the first request after a restore reused; a model whose
  restores keep reusing nothing stops being saved (the store remembers why), and the record
  shows the reuse (`llmctl status`).
"""

from __future__ import annotations

import logging
from typing import Any

from llmctl.core.config import ConfigError, load_global
from llmctl.daemon.backend import catalog, llama_server
from llmctl.daemon.backend.context import BackendContext
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.kvcache.store import MIB

log = logging.getLogger("llmctld.lifecycle")


class CacheCommand:
    def __init__(self, ctx: BackendContext):
        self.ctx = ctx
        self.waiting: list[tuple[str, str | None]] = []  # clears held until a save ends

    def handle(self, rid: str, action: str, model: str | None) -> None:
        if action == "list":
            self.ctx.reply(rid, True, **self.listing())
        elif action == "clear":
            job = self.ctx.kv.job
            if job is not None and job.kind == "save" and not job.done.is_set():
                self.waiting.append((rid, model))
                return
            self._clear(rid, model)
        else:
            self.ctx.refuse([rid], "bad_request", f"unknown cache action {action!r}; use list "
                            "or clear")

    def after_save(self) -> None:
        """A stop ended (its save too): the clears that waited for it."""
        waiting, self.waiting = self.waiting, []
        for rid, model in waiting:
            self._clear(rid, model)

    def reused(self, message: p.KvReuse) -> None:
        ctx = self.ctx
        log.info("the first request after restoring %s reused %d of %d restored tokens",
                 message.model, message.reused, message.restored)
        backend = ctx.backend
        settings = (backend.kv or {}).get("settings") or {}
        reason = ctx.kv.note_reuse(message.model, message.fingerprint, message.reused,
                                   int(settings.get("min_tokens") or 1))
        if backend.model == message.model and backend.kv and \
                backend.kv.get("fingerprint") == message.fingerprint:
            backend.kv = {**backend.kv, "reused_tokens": message.reused}
            if reason:
                log.warning("%s: %s", message.model, reason)
                backend.kv.update(kept=False, reason=reason, kept_before=backend.kv.get("reason"))
            ctx.changed()

    def listing(self) -> dict[str, Any]:
        store = self.ctx.kv.store
        saves = store.entries()
        current = {model: self._fingerprint(model) for model in {s.model for s in saves}}
        try:
            max_disk = load_global(self.ctx.paths.config_file).data["cache"]["max_disk"]
        except ConfigError:
            max_disk = None
        return {"caches": self.ctx.kv.listing(current), "dir": str(store.root),
                "used_bytes": store.used_bytes(),
                "budget_bytes": store.budget(max_disk) if max_disk is not None else None,
                "max_disk_bytes": max_disk * MIB if max_disk is not None else None}

    def _fingerprint(self, model: str) -> str | None:
        """What a switch to `model` would launch now, as a KV fingerprint; None when it
        cannot be launched (gone, broken config, no binary)."""
        try:
            cfg, entry, _ = catalog.lookup(self.ctx.paths, model)
            if entry.error or entry.model_path is None:
                return None
            binary = llama_server.find_binary(cfg["server"]["binary"])
            caps = llama_server.detect(binary)
            kv = self.ctx.kv.plan(model, cfg, entry.model_path)
            argv = llama_server.build_argv(binary, caps, cfg, entry.model_path, kv.save_dir,
                                           kv.decision.swa_full)
        except (LookupError, ConfigError, llama_server.BackendSetupError):
            return None
        self.ctx.kv.seal(kv, argv, cfg, entry.model_path)
        return kv.fingerprint

    def _clear(self, rid: str, model: str | None) -> None:
        try:
            cleared = self.ctx.kv.store.clear(model)
        except ValueError as e:
            self.ctx.refuse([rid], "bad_request", str(e))
            return
        log.info("cleared %d saved KV cache(s)%s", len(cleared), f" of {model}" if model else "")
        self._rearm(model)
        self.ctx.reply(rid, True, cleared=[{"model": s.model, "fingerprint": s.fingerprint,
                                            "tokens": s.tokens, "bytes": s.bytes}
                                           for s in cleared])

    def _rearm(self, model: str | None) -> None:
        """The clear also forgot what turned the running backend's saving off: it is saved
        at its next stop again."""
        backend = self.ctx.backend
        kv = backend.kv
        if not backend.model or not kv or "kept_before" not in kv or \
                (model is not None and backend.model != model):
            return
        before = kv["kept_before"]
        backend.kv = {**{k: v for k, v in kv.items() if k != "kept_before"}, "kept": True,
                      "reason": before or "saved when it stops"}
        self.ctx.changed()
