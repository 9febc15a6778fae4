"""The contract between llmctld's processes: every message kind as a typed record, one place
that turns records into wire dicts and back, and a dispatch helper for receivers.

Wire form: one JSON object per channel frame (see channel.py), {"type": <KIND>, **fields}.
Who sends what (docs/architecture.md has the picture):

  proxy -> lifecycle (relayed by the supervisor), each answered by exactly one Reply:
    Switch(id, model, pin, force, fit, fit_check)  load `model`, replacing what runs (pin: no
                        idle unload; force: requests in flight were cut, so no KV-cache save
                        delays it; fit_check: refuse what cannot fit; fit: load what would)
    Stop(id, idle_seconds, force)  stop the backend (cancels a load); idle_seconds: an idle
                        unload; force as for Switch
    Status(id)          reply carries the backend record (a proxy's first look)
    Ensure(id)          make sure a model is loaded: the idle-unloaded one, else the default
    Cache(id, action, model)  the saved KV caches: list them, or clear (all, or one model's)
  proxy -> lifecycle, no answer:
    KvReuse(model, fingerprint, restored, reused)  what the first request after a restore
                        reused of the restored cache (timings.cache_n)
  proxy -> supervisor, answered by one Reply:
    Reload(id)          re-read the configuration everywhere (also SIGHUP)
    RestartProxy(id)    graceful proxy restart (also SIGUSR2)
  lifecycle -> the proxy that sent the command:  Event(id, event, data) ..., then Reply
  lifecycle -> every proxy:                      State(backend) after each backend change,
                                                 RpcHealth(workers) after each change of
                                                 the RPC workers' health
  supervisor -> proxy:                           Workers(workers)
  supervisor -> worker:                          ReloadConfig(), Shutdown() (lifecycle)
  worker -> supervisor:                          Ready(pid) once it serves; Failed(error)
                                                 when its boot raised

Command ids are opaque strings chosen by the sender (unique per daemon: the proxy uses its pid
and a counter). Nobody parses them: the supervisor remembers which channel sent each one.

Adding a message kind: declare a frozen dataclass below with a KIND (and TO for a command),
list it in KINDS, and add a handler to the dispatch table of each receiver. A frame that is
JSON but not a known, well-formed message decodes to Malformed: receivers log it and, when it
carries an id, answer it with a `bad_message` error reply; it never crashes a process.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger("llmctld")


class Message:
    """Base of every record. KIND is the wire name."""

    KIND: ClassVar[str] = ""


class Command(Message):
    """A request that gets exactly one Reply with the same id. TO names the receiver."""

    TO: ClassVar[str] = "lifecycle"
    id: str


# --- commands -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Switch(Command):
    KIND: ClassVar[str] = "switch"
    id: str
    model: str
    pin: bool = False  # keep it loaded: never unloaded for idleness (`llmctl switch --pin`)
    force: bool = False  # in-flight requests were cut: nothing (no KV save) may delay it
    fit: bool = False  # load it with what fits when it does not as configured (`--fit`)
    fit_check: bool = True  # refuse a load that does not fit in memory (`--no-fit-check`)


@dataclass(frozen=True)
class Stop(Command):
    KIND: ClassVar[str] = "stop"
    id: str
    idle_seconds: float | int | None = None  # an idle unload, after that long without requests
    force: bool = False  # as Switch.force


@dataclass(frozen=True)
class Cache(Command):
    """The saved KV caches (daemon/kvcache/): `list`, or `clear` them (all, or `model`'s).
    Through the lifecycle worker, the only writer of the store, so a clear never races a
    save."""

    KIND: ClassVar[str] = "cache"
    id: str
    action: str = "list"
    model: str | None = None


@dataclass(frozen=True)
class Status(Command):
    KIND: ClassVar[str] = "status"
    id: str


@dataclass(frozen=True)
class Ensure(Command):
    KIND: ClassVar[str] = "ensure"
    id: str


@dataclass(frozen=True)
class KvReuse(Message):
    """What the first request after a KV-cache restore reused (llama-server's
    timings.cache_n): the proxy sees it, the lifecycle worker stops saving a model whose
    restores keep reusing nothing. No reply."""

    KIND: ClassVar[str] = "kv_reuse"
    model: str
    fingerprint: str
    restored: int
    reused: int


@dataclass(frozen=True)
class Reload(Command):
    KIND: ClassVar[str] = "reload"
    TO: ClassVar[str] = "supervisor"
    id: str


@dataclass(frozen=True)
class RestartProxy(Command):
    KIND: ClassVar[str] = "restart_proxy"
    TO: ClassVar[str] = "supervisor"
    id: str


# --- answers and broadcasts ----------------------------------------------------------------


@dataclass(frozen=True)
class Event(Message):
    """Progress of a command (starting, progress, stopping); `data` is what the client sees."""

    KIND: ClassVar[str] = "event"
    id: str
    event: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply(Message):
    """The final answer to a command. `error` ({"code", "message", ...}) when not ok; `data`
    the result fields (e.g. model, load_seconds, backend)."""

    KIND: ClassVar[str] = "reply"
    id: str
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class State(Message):
    """The backend record (core.state.Backend.to_dict()) after a change."""

    KIND: ClassVar[str] = "state"
    backend: dict[str, Any]


@dataclass(frozen=True)
class RpcHealth(Message):
    """The RPC workers' health (daemon/rpc/records.py WorkerHealth.public(), one per
    configured worker) after a change; not llmctld's own worker processes (Workers)."""

    KIND: ClassVar[str] = "rpc_health"
    workers: list[Any]


@dataclass(frozen=True)
class Workers(Message):
    KIND: ClassVar[str] = "workers"
    workers: dict[str, Any]


@dataclass(frozen=True)
class ReloadConfig(Message):
    KIND: ClassVar[str] = "reload_config"


@dataclass(frozen=True)
class Shutdown(Message):
    KIND: ClassVar[str] = "shutdown"


@dataclass(frozen=True)
class Ready(Message):
    """A worker finished booting: from now on its death is a crash, not a boot failure."""

    KIND: ClassVar[str] = "ready"
    pid: int


@dataclass(frozen=True)
class Failed(Message):
    """A worker's boot raised: the supervisor keeps the text as that worker's last error."""

    KIND: ClassVar[str] = "failed"
    error: str


@dataclass(frozen=True)
class Malformed(Message):
    """Not a wire kind: what decode() returns for a frame it cannot accept."""

    KIND: ClassVar[str] = "malformed"
    reason: str
    id: str | None = None


KINDS: dict[str, type[Message]] = {cls.KIND: cls for cls in (
    Switch, Stop, Status, Ensure, Cache, KvReuse, Reload, RestartProxy, Event, Reply, State,
    RpcHealth, Workers, ReloadConfig, Shutdown, Ready, Failed)}


class ProtocolError(Exception):
    pass


def error_reply(rid: str, code: str, message: str, **extra: Any) -> Reply:
    return Reply(rid, False, error={"code": code, "message": message, **extra})


def encode(message: Message) -> dict[str, Any]:
    if type(message) not in KINDS.values():
        raise ProtocolError(f"{type(message).__name__} is not a wire message")
    out: dict[str, Any] = {"type": message.KIND}
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        out[f.name] = getattr(message, f.name)
    return out


def decode(raw: Any) -> Message:
    """The record a wire dict stands for, or Malformed saying why not (never raises)."""
    rid = raw.get("id") if isinstance(raw, dict) else None
    rid = rid if isinstance(rid, str) else None
    if not isinstance(raw, dict):
        return Malformed(f"a message must be a JSON object, not {type(raw).__name__}")
    kind = raw.get("type")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return Malformed(f"unknown message type {kind!r}", rid)
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                return Malformed(f"{kind} message lacks {f.name!r}", rid)
            continue
        value = raw[f.name]
        if not _matches(value, hints[f.name]):
            return Malformed(f"{kind} message has a bad {f.name!r}: {value!r:.80}", rid)
        values[f.name] = value
    extra = set(raw) - {"type"} - set(values) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if extra:
        return Malformed(f"{kind} message has unknown fields {sorted(extra)}", rid)
    return cls(**values)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    base = origin or hint
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)


Handler = Callable[[Any], None]


def dispatch(table: Mapping[type[Message], Handler], message: Message, receiver: str,
             answer: Callable[[Reply], None] | None = None) -> None:
    """Call the handler `table` has for this message's type. A message this receiver has no
    handler for, or a Malformed one, is logged and, if it has an id and `answer` is given,
    answered with a bad_message error: a protocol mistake never takes a process down."""
    handler = table.get(type(message))
    if handler is not None:
        handler(message)
        return
    reason = message.reason if isinstance(message, Malformed) else (
        f"{receiver} does not handle {message.KIND!r} messages")
    log.error("protocol error in the %s: %s", receiver, reason)
    rid = getattr(message, "id", None)
    if answer is not None and isinstance(rid, str) and not isinstance(message, Reply):
        answer(error_reply(rid, "bad_message", f"protocol error: {reason}"))
