"""The memory one launch needs, from the best estimator there is, computed once per
fingerprint and kept on disk under the runtime home (`cache/memory/<fingerprint>.json`), so a
repeated listing, a restarted worker and the other worker all read it instead of running it.

A `Launch` is llama-server's argv as llama_server.build_argv makes it (the very argv a load
would spawn: the two cannot disagree) with the model's files. With llama-fit-params beside
llama-server the fingerprint covers what that tool is given (its binary, the model's files by
identity, the flags it takes: fit_params.fit_argv), so two ids of one file with one config
share an estimate and a changed file, flag or build gets a new one. Without it, the fallback
(gguf_estimate.py) is keyed by llama-server's argv minus where it listens.

A failed run is cached too (with its reason): it is shown, not retried on every listing; a
changed file, flag or binary is a new fingerprint and tries again. The directory keeps at most
MAX_FILES records (the oldest go first). Both workers write it; one file per fingerprint,
renamed into place, means neither ever reads half a record or loses the other's.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.core.gguf import GGUFError
from llmctl.core.paths import Paths
from llmctl.daemon.backend.fingerprint import fingerprint
from llmctl.daemon.memory import fit_params, gguf_estimate
from llmctl.daemon.memory.needs import MIB, Needs

log = logging.getLogger("llmctld.memory")

VERSION = 1
MAX_FILES = 512
MEMORY_RECORDS = 1024
_SERVER_IGNORE = {"--host": 1, "--port": 1, "--alias": 1}


def memory_cache(paths: Paths) -> Path:
    """Where the records live: beside the GGUF header cache, safe to delete."""
    return paths.runtime / "cache" / "memory"


@dataclass(frozen=True)
class Launch:
    model: str
    argv: list[str]  # llama-server's, from build_argv
    files: list[Path]  # the model's files, first shard first
    extra_files: list[Path] = field(default_factory=list)  # projector, draft model
    ctx_size: int | None = None  # -c, or the trained context for -c 0 (None: unknown)

    @classmethod
    def of(cls, model: str, cfg: dict[str, Any], entry: Any, argv: list[str]) -> Launch:
        files = list(entry.shards) or [entry.model_path]
        extra = [Path(cfg[k]) for k in ("mmproj_file", "draft_model_file") if cfg.get(k)]
        ctx = int(cfg["llama"]["ctx_size"]) or int((entry.facts or {}).get("context_length")
                                                    or 0)
        return cls(model, list(argv), files, extra, ctx or None)


@dataclass(frozen=True)
class Record:
    key: str
    needs: Needs | None
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "key": self.key, "error": self.error,
                "needs": self.needs.to_dict() if self.needs else None,
                "seconds": round(self.seconds, 3), "at": round(time.time(), 3)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        needs = Needs.from_dict(data["needs"]) if data.get("needs") else None
        return cls(str(data["key"]), needs, data.get("error"), float(data.get("seconds") or 0))


class Estimator:
    def __init__(self, directory: Path, timeout: float = fit_params.TIMEOUT):
        self.directory = directory
        self.timeout = timeout
        self._records: OrderedDict[str, Record] = OrderedDict()
        self._unusable: set[str] = set()
        self._keys: OrderedDict[tuple[Any, ...], tuple[str, list[str] | None]] = OrderedDict()

    def key(self, launch: Launch) -> tuple[str, list[str] | None]:
        """The launch's fingerprint, and llama-fit-params' argv when it is there. Listings ask
        for every model each time: the answer is kept while the argv and a plain stat of
        every file involved stay the same (resolving paths for the fingerprint is most of
        its cost: ~100 us a model)."""
        files = [*launch.files, *launch.extra_files]
        server = Path(launch.argv[0])
        stamp = (tuple(launch.argv), tuple(_stamp(f) for f in
                                           [server, server.parent / fit_params.NAME, *files]))
        known = self._keys.get(stamp)
        if known is None:
            known = self._keys[stamp] = self._key(launch, files)
            while len(self._keys) > MEMORY_RECORDS:
                self._keys.popitem(last=False)
        return known

    def _key(self, launch: Launch, files: list[Path]) -> tuple[str, list[str] | None]:
        tool = fit_params.find(Path(launch.argv[0]))
        if tool is not None:
            try:
                argv = fit_params.fit_argv(tool, launch.argv, fit_params.accepted_flags(tool))
            except (fit_params.FitError, OSError) as e:
                if str(tool) not in self._unusable:  # said once, not per model and listing
                    self._unusable.add(str(tool))
                    log.warning("%s is unusable, estimating from the GGUF instead: %s",
                                tool, e)
            else:
                return fingerprint(argv, files, {}, v=VERSION, source="fit"), argv
        return fingerprint(launch.argv, files, _SERVER_IGNORE, v=VERSION, source="gguf"), None

    def cached(self, launch: Launch) -> Record | None:
        return self.lookup(self.key(launch)[0])

    def get(self, launch: Launch) -> Record:
        """The cached record, else one computed now (bounded by the timeout)."""
        key, argv = self.key(launch)
        return self.lookup(key) or self.compute(launch, key, argv)

    def compute(self, launch: Launch, key: str | None = None,
                argv: list[str] | None = None) -> Record:
        if key is None:
            key, argv = self.key(launch)
        started = time.monotonic()
        extra = sum(_size(f) for f in launch.extra_files) // MIB
        try:
            if argv is not None:
                needs = fit_params.estimate(argv, launch.ctx_size, self.timeout)
            else:
                needs = gguf_estimate.estimate(launch.argv, launch.files)
            record = Record(key, Needs(needs.source, needs.parts, needs.ctx_size, extra,
                                       needs.notes), seconds=time.monotonic() - started)
        except (fit_params.FitError, GGUFError, OSError) as e:
            record = Record(key, None, str(e), time.monotonic() - started)
            log.warning("cannot estimate the memory %s needs: %s", launch.model, e)
        self._remember(record)
        self._write(record)
        return record

    # --- the records --------------------------------------------------------------------------

    def lookup(self, key: str) -> Record | None:
        record = self._records.get(key)
        if record is not None:
            self._records.move_to_end(key)
            return record
        try:
            data = json.loads((self.directory / f"{key}.json").read_text())
            if data.get("version") != VERSION or data.get("key") != key:
                return None
            record = Record.from_dict(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none yet, or unreadable: computed again
        self._remember(record)
        return record

    def _remember(self, record: Record) -> None:
        self._records[record.key] = record
        self._records.move_to_end(record.key)
        while len(self._records) > MEMORY_RECORDS:
            self._records.popitem(last=False)

    def _write(self, record: Record) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(record.to_dict(), f)
                os.replace(tmp, self.directory / f"{record.key}.json")
            except BaseException:
                os.unlink(tmp)
                raise
            self._prune()
        except OSError as e:
            log.warning("cannot write the memory estimate cache in %s: %s", self.directory, e)

    def _prune(self) -> None:
        files = [e for e in os.scandir(self.directory) if e.name.endswith(".json")]
        if len(files) <= MAX_FILES:
            return
        files.sort(key=lambda e: e.stat().st_mtime)
        for entry in files[:len(files) - MAX_FILES * 3 // 4]:
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def _stamp(path: Path) -> tuple[Any, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
