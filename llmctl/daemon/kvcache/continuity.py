"""What the lifecycle's phases call to keep a model's KV cache across a stop:

- before a launch: `plan()` (is it kept? which flags: --slot-save-path, --swa-full), then
  `seal()` with the argv built from it (the fingerprint; a fingerprint the store has given
  up on is not kept) — the plan travels with the load and ends up, as `record()`, in the
  backend record (`Backend.kv`), so an adopted backend is saved the same way;
- when /health first answers: `begin_restore()`, a job the loop ticks through before it
  reports the backend ready (progress phase `restoring`), then `finish_restore()`;
- before SIGTERM: `begin_save()`, then `finish_save()` (commit, or nothing), and once the
  process is gone `after_stop()` removes what a cut save left;
- from the proxy: `note_reuse()`, what the first request after a restore reused.

Every fact a save or a restore produced is also kept in `events` until the next reply takes
it (the proxy's metrics count them there, once: a reply reaches one proxy worker).
Only one job runs at a time (one backend); a clear asked for meanwhile waits for its end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.core.durations import parse_duration
from llmctl.core.paths import Paths
from llmctl.daemon.kvcache.identity import kv_fingerprint
from llmctl.daemon.kvcache.policy import Decision, decide
from llmctl.daemon.kvcache.store import KvStore, Saved
from llmctl.daemon.kvcache.transfer import Job, run_restore, run_save

log = logging.getLogger("llmctld.kvcache")


@dataclass
class KvPlan:
    model: str
    decision: Decision
    save_dir: Path | None  # --slot-save-path, when kept
    settings: dict[str, Any]
    fingerprint: str = ""

    def record(self, **facts: Any) -> dict[str, Any]:
        """The backend record's `kv` field: what status shows, and what a save needs."""
        return {"kept": self.decision.keep, "reason": self.decision.reason,
                "fingerprint": self.fingerprint, "swa_full": self.decision.swa_full,
                "settings": self.settings, **facts}


@dataclass
class Continuity:
    paths: Paths
    store: KvStore = field(init=False)
    job: Job | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store = KvStore(self.paths.kv_dir)
        # a lifecycle worker that died during a save left its temporary file: no save is
        # under way now (this worker has none yet)
        self.store.discard_temps()

    # --- before a launch ----------------------------------------------------------------------

    def plan(self, model: str, cfg: dict[str, Any], model_path: Path) -> KvPlan:
        decision = decide(cfg, model_path)
        save_dir = None
        if decision.keep:
            try:
                save_dir = self.store.model_dir(model, create=True)
            except OSError as e:
                decision = Decision(False, f"cannot create {self.store.root / model}: "
                                    f"{e.strerror}")
        cache = cfg["cache"]
        settings = {"min_tokens": cache["min_tokens"], "max_disk": cache["max_disk"],
                    "save_timeout": parse_duration(cache["save_timeout"]) or 10.0,
                    "bytes_per_token": decision.bytes_per_token}
        return KvPlan(model, decision, save_dir, settings)

    def seal(self, plan: KvPlan, argv: list[str], cfg: dict[str, Any], model_path: Path,
             ) -> None:
        plan.fingerprint = kv_fingerprint(argv, cfg, model_path)
        off = self.store.off_reason(plan.model, plan.fingerprint)
        if off and plan.decision.keep:
            plan.decision = Decision(False, off, plan.decision.swa_full)

    def launching(self, plan: KvPlan) -> None:
        """A launch begins: saves of this model under another fingerprint can never be
        restored again."""
        for fingerprint in self.store.drop_stale(plan.model, plan.fingerprint):
            log.info("dropped the saved KV cache of %s made with other settings (%s)",
                     plan.model, fingerprint)

    # --- restore --------------------------------------------------------------------------------

    def begin_restore(self, plan: KvPlan, host: str, port: int) -> Job | None:
        if not plan.decision.keep:
            return None
        saved = self.store.find(plan.model, plan.fingerprint)
        if saved is None:
            return None
        job = Job("restore", plan.model, plan.fingerprint, host, port,
                  time.monotonic() + plan.settings["save_timeout"])
        self.job = job
        return job.start(run_restore, saved.slots)

    def finish_restore(self, job: Job) -> dict[str, Any]:
        """The facts for the backend record: restored tokens, or why none."""
        self.job = None
        saved = self.store.find(job.model, job.fingerprint)
        tokens = sum(r["tokens"] for r in job.results)
        size = sum(r["bytes"] for r in job.results)
        if job.timed_out() or job.error or not tokens:
            why = "timed out (cache.save_timeout)" if job.timed_out() else (
                job.error or "nothing was restored")
            log.warning("restoring the KV cache of %s failed: %s; dropping that save",
                        job.model, why)
            self.store.drop(job.model, job.fingerprint)
            return {"restore_error": why}
        if saved is not None:
            self.store.touch(saved)
        log.info("restored %d tokens (%d bytes) of %s's KV cache in %.3fs", tokens, size,
                 job.model, job.seconds)
        self.events.append({"kind": "restore", "model": job.model, "tokens": tokens,
                            "bytes": size, "seconds": job.seconds})
        return {"restored_tokens": tokens, "restored_bytes": size,
                "restore_seconds": job.seconds, "reused_tokens": None}

    # --- save -------------------------------------------------------------------------------------

    def begin_save(self, model: str | None, kv: dict[str, Any] | None, host: str | None,
                   port: int | None) -> Job | None:
        """A save of the slots of the backend about to stop, when its record says it is
        kept. (A forced stop does not call this: nothing may delay it.)"""
        if not model or not kv or not kv.get("kept") or not host or not port:
            return None
        settings = kv.get("settings") or {}
        budget = self.store.budget(int(settings.get("max_disk") or 0))
        per_token = float(settings.get("bytes_per_token") or 0.0)
        job = Job("save", model, str(kv.get("fingerprint")), host, port,
                  time.monotonic() + float(settings.get("save_timeout") or 10.0),
                  max_disk=int(settings.get("max_disk") or 0))
        self.job = job
        return job.start(run_save, int(settings.get("min_tokens") or 1),
                         lambda tokens: tokens * per_token <= budget)

    def finish_save(self, job: Job, cut: bool = False) -> dict[str, Any]:
        """Commit what answered (within the disk budget), else nothing; the facts for the
        stopped record. `cut`: a forced stop ended it early."""
        self.job = None
        model, fingerprint = job.model, job.fingerprint
        if job.timed_out() or job.error:
            why = job.error if not job.timed_out() else (
                "cut by a forced stop" if cut else "took longer than cache.save_timeout")
            log.warning("saving the KV cache of %s failed (%s); it is not kept, the stop goes "
                        "on", model, why)
            return {"model": model, "save_error": why}
        if not job.results:
            if job.skipped:
                log.info("not saving the KV cache of %s: %s", model, job.skipped)
            return {"model": model, "save_skipped": job.skipped}
        size = sum(r["bytes"] for r in job.results)
        tokens = sum(r["tokens"] for r in job.results)
        budget = self.store.budget(job.max_disk)
        if not self.store.make_room(size, budget, (model, fingerprint)):
            log.info("not keeping the KV cache of %s: %d bytes would not fit cache.max_disk "
                     "(%d bytes allowed)", model, size, budget)
            self.store.discard_temps(model)
            return {"model": model, "save_skipped": "it would not fit cache.max_disk"}
        self.store.commit(model, fingerprint, job.results)
        log.info("saved %d tokens (%d bytes) of %s's KV cache in %.3fs", tokens, size, model,
                 job.seconds)
        self.events.append({"kind": "save", "model": model, "tokens": tokens, "bytes": size,
                            "seconds": job.seconds})
        return {"model": model, "saved_tokens": tokens, "saved_bytes": size,
                "save_seconds": job.seconds, "saved_at": time.time()}

    def after_stop(self, model: str | None) -> None:
        """The process is gone: what a cut or failed save was writing goes too."""
        if model:
            self.store.discard_temps(model)

    # --- from the proxy, and the cache command --------------------------------------------

    def note_reuse(self, model: str, fingerprint: str, reused: int, useful: int,
                   ) -> str | None:
        return self.store.note_reuse(model, fingerprint, reused, useful)

    def take_events(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    def listing(self, current: dict[str, str | None]) -> list[dict[str, Any]]:
        """Every save, with whether it matches what its model would be launched with now
        (`current`: model -> fingerprint, None when it cannot be launched)."""
        now = time.time()
        return [describe(s, current.get(s.model), now) for s in self.store.entries()]


def describe(saved: Saved, current: str | None, now: float) -> dict[str, Any]:
    return {"model": saved.model, "fingerprint": saved.fingerprint, "tokens": saved.tokens,
            "bytes": saved.bytes, "slots": len(saved.slots), "saved_at": saved.saved_at,
            "used_at": saved.used_at, "age_s": round(now - saved.saved_at, 1),
            "matches": current == saved.fingerprint}
