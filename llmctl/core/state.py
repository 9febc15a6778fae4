"""The backend record and state.json, what a restarted worker or daemon needs to carry on.

`Backend` declares the record's fields once; the lifecycle worker owns the live one, the
proxy mirrors it from State broadcasts, the API, the CLI and state.json all read these
fields. Its state changes only through `transition()`, which knows the legal moves:

    stopped  -> starting | failed
    starting -> ready | stopping | failed | stopped
    ready    -> stopping | failed
    stopping -> stopped | failed
    failed   -> starting | stopped | failed

(`failed` is also where a switch that cannot even start leaves an idle backend; a new
failure while failed replaces the old one.) Any other move raises IllegalTransition.

state.json is written by the lifecycle worker only, atomically (temp file in the same
directory, rename), mode 0600, with a schema version. Not fsynced: it describes running
processes, which a power loss ends too, and a process crash cannot tear a renamed file; an
fsync cost 1-4 ms on each of the several writes of every switch. Readers tolerate a missing, torn
or foreign file: they get None and a reason, never an exception.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

BACKEND_STATES = ("stopped", "starting", "ready", "stopping", "failed")
LEGAL_MOVES: dict[str, frozenset[str]] = {
    "stopped": frozenset({"starting", "failed"}),
    "starting": frozenset({"ready", "stopping", "failed", "stopped"}),
    "ready": frozenset({"stopping", "failed"}),
    "stopping": frozenset({"stopped", "failed"}),
    "failed": frozenset({"starting", "stopped", "failed"}),
}
# Entering these states starts a fresh record (only the generation carries over); entering
# the others keeps the facts of the process that is still there.
_FRESH_RECORD = frozenset({"stopped", "starting", "failed"})
ACTIVE_STATES = frozenset({"starting", "ready"})  # a model is (being) served
PRIVATE_FIELDS = frozenset({"cmdline"})  # in state.json, not in the API


class IllegalTransition(Exception):
    pass


@dataclass
class Backend:
    state: str = "stopped"
    model: str | None = None
    pid: int | None = None
    create_time: float | None = None
    cmdline: list[str] | None = None
    host: str | None = None
    port: int | None = None
    model_path: str | None = None
    started_at: float | None = None  # wall clock
    ready_at: float | None = None
    load_seconds: float | None = None
    progress: dict[str, Any] | None = None  # {"phase", "percent"} while starting
    error: str | None = None
    exit_code: int | None = None
    log_tail: list[str] = field(default_factory=list)
    generation: int = 0  # bumped on every change the lifecycle worker publishes
    pinned: bool = False  # `llmctl switch --pin`: never unloaded for idleness
    # after an idle unload: {"model", "idle_seconds", "at"}, what the next request wakes
    unloaded: dict[str, Any] | None = None
    # KV-cache continuity (daemon/kvcache/): while it runs, whether it is kept and why, its
    # fingerprint, what a restore brought back and the first request reused; once stopped,
    # what was saved (or why not)
    kv: dict[str, Any] | None = None

    def transition(self, to: str, **facts: Any) -> None:
        """Move to state `to`, setting `facts` (field names of this record)."""
        if to not in LEGAL_MOVES.get(self.state, ()):
            raise IllegalTransition(f"backend cannot go from {self.state} to {to}")
        unknown = set(facts) - set(FIELDS)
        if unknown or "state" in facts or "generation" in facts:
            raise TypeError(f"not backend facts: {sorted(unknown | {'state', 'generation'} & set(facts))}")
        if to in _FRESH_RECORD:
            fresh = Backend(generation=self.generation)
            for name in FIELDS:
                setattr(self, name, getattr(fresh, name))
        self.state = to
        for name, value in facts.items():
            setattr(self, name, value)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def public(self) -> dict[str, Any]:
        """What the API shows."""
        return {k: v for k, v in self.to_dict().items() if k not in PRIVATE_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Backend:
        """A record as written by to_dict (state.json, a State message, the API): missing
        fields take their defaults, unknown ones are ignored. Raises ValueError for an
        unknown state."""
        record = cls(**{k: v for k, v in data.items() if k in FIELDS})
        if record.state not in BACKEND_STATES:
            raise ValueError(f"unknown backend state {record.state!r}")
        if record.log_tail is None:
            record.log_tail = []
        return record


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Backend))


def empty_backend() -> dict[str, Any]:
    return Backend().to_dict()


def read_state(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror}"
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, f"{path} is corrupt (not JSON); ignoring it"
    if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION or not isinstance(
            data.get("backend"), dict):
        return None, f"{path} has an unknown layout; ignoring it"
    try:
        data["backend"] = Backend.from_dict(data["backend"]).to_dict()
    except (ValueError, TypeError):
        return None, f"{path} names an unknown backend state; ignoring it"
    return data, None


def write_state(path: Path, backend: dict[str, Any], daemon: dict[str, Any]) -> None:
    data = {"version": SCHEMA_VERSION, "daemon": daemon, "backend": backend}
    payload = json.dumps(data, indent=1, sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
