"""The saved KV caches on disk: $LLMCTL_RUNTIME_HOME/kv/<model>/, private (0700 folders,
0600 files).

    kv/<model>/<fp>.json          what was saved: slots, tokens, bytes, when saved, last used
    kv/<model>/<fp>-slot<N>.bin   llama-server's own slot file for slot N
    kv/<model>/tmp-<fp>-slot<N>.bin   a save in progress (llama-server writes it)
    kv/<model>/<fp>.off           why this fingerprint is no longer kept (restores reused
                                  nothing)

llama-server writes a slot file where --slot-save-path (the model's folder) says, under the
temporary name; only when the whole save answered is it renamed and the .json written, so a
save that failed, timed out or was killed leaves a temporary file that `discard_temps`
removes once the process is gone, never a torn save. Only the lifecycle worker writes here;
the proxy only reads (`llmctl cache`).

Disk is bounded: cache.max_disk, and never more than half of what the disk has for it (free
space plus what the saves use already). Least recently used saves (saved or restored) go
first; a save that would not fit even then is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.core.config import MODEL_ID_RE

log = logging.getLogger("llmctld.kvcache")

MIB = 1024 * 1024
FREE_SHARE = 0.5  # of free space + the saves' own size
USELESS_RESTORES = 2  # restores in a row that reused (next to) nothing: stop keeping that fingerprint


@dataclass
class Saved:
    model: str
    fingerprint: str
    saved_at: float
    used_at: float
    slots: list[dict[str, Any]]  # {"slot", "file", "tokens", "bytes"}
    useless_restores: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(int(s.get("tokens") or 0) for s in self.slots)

    @property
    def bytes(self) -> int:
        return sum(int(s.get("bytes") or 0) for s in self.slots)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "fingerprint": self.fingerprint,
                "saved_at": self.saved_at, "used_at": self.used_at, "slots": self.slots,
                "useless_restores": self.useless_restores}


def slot_file(fingerprint: str, slot: int) -> str:
    return f"{fingerprint}-slot{slot}.bin"


def temp_file(fingerprint: str, slot: int) -> str:
    return f"tmp-{slot_file(fingerprint, slot)}"


class KvStore:
    def __init__(self, root: Path):
        self.root = root

    def model_dir(self, model: str, create: bool = False) -> Path:
        if not MODEL_ID_RE.fullmatch(model):
            raise ValueError(f"{model!r} is not a model id")
        path = self.root / model
        if create:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
            for p in (self.root, path):
                os.chmod(p, 0o700)
        return path

    # --- reading ------------------------------------------------------------------------------

    def entries(self, model: str | None = None) -> list[Saved]:
        dirs = [self.root / model] if model else (
            sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else [])
        found = []
        for directory in dirs:
            for meta in sorted(directory.glob("*.json")):
                saved = self._read(meta)
                if saved is not None:
                    found.append(saved)
        return found

    def find(self, model: str, fingerprint: str) -> Saved | None:
        return self._read(self.root / model / f"{fingerprint}.json")

    def off_reason(self, model: str, fingerprint: str) -> str | None:
        try:
            return json.loads((self.root / model / f"{fingerprint}.off").read_text())["reason"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def any_off_reason(self, model: str) -> str | None:
        """Why the model is no longer kept, for a reader who does not know its current
        fingerprint (a launch drops the .off files of other fingerprints)."""
        directory = self.root / model
        for off in sorted(directory.glob("*.off")) if directory.is_dir() else []:
            reason = self.off_reason(model, off.stem)
            if reason:
                return reason
        return None

    def used_bytes(self) -> int:
        if not self.root.is_dir():
            return 0
        # committed saves only: a save in progress is counted as what it asks room for
        return sum(p.stat().st_size for p in self.root.glob("*/*.bin")
                   if p.is_file() and not p.name.startswith("tmp-"))

    def budget(self, max_disk_mib: int) -> int:
        """Bytes the saves may use in all: cache.max_disk, capped by free space."""
        used = self.used_bytes()
        try:
            free = shutil.disk_usage(self.root if self.root.exists() else self.root.parent).free
        except OSError:
            free = 0
        return int(min(max_disk_mib * MIB, (free + used) * FREE_SHARE))

    def _read(self, meta: Path) -> Saved | None:
        try:
            data = json.loads(meta.read_text())
            saved = Saved(str(data["model"]), str(data["fingerprint"]),
                          float(data["saved_at"]), float(data["used_at"]), list(data["slots"]),
                          int(data.get("useless_restores") or 0))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not all((meta.parent / str(s.get("file"))).is_file() for s in saved.slots):
            return None  # a slot file was removed by hand: nothing to restore
        return saved

    # --- writing (the lifecycle worker only) ------------------------------------------------

    def commit(self, model: str, fingerprint: str, slots: list[dict[str, Any]]) -> Saved:
        """A save that answered: its temporary files renamed into place, then the .json."""
        directory = self.model_dir(model, create=True)
        before = self.find(model, fingerprint)
        for slot in slots:
            final = directory / slot_file(fingerprint, slot["slot"])
            os.replace(directory / temp_file(fingerprint, slot["slot"]), final)
            os.chmod(final, 0o600)
            slot["file"] = final.name
        now = time.time()
        # the count of restores that reused nothing goes on across saves: it is about the
        # model and its settings, not about one conversation
        saved = Saved(model, fingerprint, now, now, slots,
                      before.useless_restores if before is not None else 0)
        self._write_meta(directory, saved)
        keep = {f"{fingerprint}.json", f"{fingerprint}.off", *(s["file"] for s in slots)}
        for path in directory.iterdir():  # older slot files of this fingerprint
            if path.name.startswith(fingerprint) and path.name not in keep:
                path.unlink(missing_ok=True)
        return saved

    def touch(self, saved: Saved) -> None:
        saved.used_at = time.time()
        self._write_meta(self.root / saved.model, saved)

    def note_reuse(self, model: str, fingerprint: str, reused: int, useful: int = 1,
                   ) -> str | None:
        """What a restore's first request reused; under `useful` tokens (cache.min_tokens:
        a chat template's first tokens match any conversation) counts as nothing. Returns
        the reason this fingerprint is no longer kept when the restores keep reusing
        nothing."""
        saved = self.find(model, fingerprint)
        if saved is None:
            return None
        saved.useless_restores = 0 if reused >= useful else saved.useless_restores + 1
        if saved.useless_restores < USELESS_RESTORES:
            self._write_meta(self.root / model, saved)
            return None
        reason = (f"its last {saved.useless_restores} restores reused nothing (under "
                  f"{useful} tokens: llama-server processed the prompt again), so its cache "
                  "is no longer saved; "
                  f"`llmctl cache clear {model}` tries again")
        self.drop(model, fingerprint)
        path = self.root / model / f"{fingerprint}.off"
        _write_private(path, json.dumps({"reason": reason, "at": time.time()}).encode())
        return reason

    def drop(self, model: str, fingerprint: str) -> None:
        directory = self.root / model
        for path in list(directory.glob(f"{fingerprint}*")) + list(
                directory.glob(f"tmp-{fingerprint}*")):
            if path.suffix != ".off":
                path.unlink(missing_ok=True)

    def drop_stale(self, model: str, fingerprint: str) -> list[str]:
        """Saves of `model` under any other fingerprint: they can never be restored."""
        dropped = []
        for saved in self.entries(model) if (self.root / model).is_dir() else []:
            if saved.fingerprint != fingerprint:
                self.drop(model, saved.fingerprint)
                dropped.append(saved.fingerprint)
        for off in (self.root / model).glob("*.off") if (self.root / model).is_dir() else []:
            if off.stem != fingerprint:
                off.unlink(missing_ok=True)
        return dropped

    def discard_temps(self, model: str | None = None) -> None:
        pattern = f"{model}/tmp-*" if model else "*/tmp-*"
        if self.root.is_dir():
            for path in self.root.glob(pattern):
                path.unlink(missing_ok=True)

    def clear(self, model: str | None = None) -> list[Saved]:
        """Remove every save (of `model`), and what was learned about its restores."""
        cleared = self.entries(model) if model is None or (self.root / model).is_dir() else []
        dirs = [self.root / model] if model else (
            [p for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else [])
        for directory in dirs:  # the directories stay: one may be a running --slot-save-path
            for path in directory.iterdir():
                path.unlink(missing_ok=True)
        return cleared

    def make_room(self, need: int, budget: int, keep: tuple[str, str]) -> bool:
        """Evict least recently used saves (never `keep`, (model, fingerprint)) until
        `need` more bytes fit the budget; False when they cannot."""
        if need > budget:
            return False
        used = self.used_bytes()
        others = sorted((s for s in self.entries() if (s.model, s.fingerprint) != keep),
                        key=lambda s: s.used_at)
        kept = self.find(*keep)
        if kept is not None:  # its files are replaced by the new save
            used -= kept.bytes
        while used + need > budget and others:
            victim = others.pop(0)
            log.info("evicting the saved KV cache of %s (%d tokens, %d bytes, last used %s) "
                     "to stay within cache.max_disk", victim.model, victim.tokens, victim.bytes,
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(victim.used_at)))
            self.drop(victim.model, victim.fingerprint)
            used -= victim.bytes
        return used + need <= budget

    def _write_meta(self, directory: Path, saved: Saved) -> None:
        _write_private(directory / f"{saved.fingerprint}.json",
                       json.dumps(saved.to_dict(), indent=1).encode())


def _write_private(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".meta-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp makes it 0600
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
