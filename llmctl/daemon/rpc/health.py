"""The checker: a thread of the lifecycle worker that looks at every configured RPC worker on
an interval (daemon.rpc_check_interval, 5 s by default), off the request path, and keeps the
results for the lifecycle loop to act on and publish (backend/rpc_guard.py).

How it looks, and why it must not simply connect to everyone (core/rpc_probe.py says more):

- A worker our own llama-server holds (`hold()`: the lifecycle names that process and the
  addresses of its --rpc every tick) is never probed: a probe would queue behind
  llama-server's connection, and two queued probes lock everyone out. While that
  llama-server is ready, the worker's health is the state of llama-server's own TCP
  connection to it: ESTABLISHED is up; gone or CLOSE_WAIT (the worker closed it) is down.
  While it loads, it opens and closes connections by the dozen: nothing is judged then.
- Any other worker gets a probe: connect, RPC hello, its devices' memory. All probes of a
  round run at once, so a round takes PROBE_TIMEOUT at most, however many workers.
- A busy worker (another client holds it) is probed again only after BUSY_RECHECK, and a
  timeout right after `busy` is read as still busy (its queue is full), not as down.

Thread safety: the records are changed under a lock, here only; the lifecycle reads copies
(`snapshot()`). The thread never touches the channel: the lifecycle loop publishes.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from typing import Any

import psutil

from llmctl.core.rpc_probe import Probe, probe_all, split_address
from llmctl.daemon.rpc.records import WorkerHealth

log = logging.getLogger("llmctld.lifecycle")

PROBE_TIMEOUT = 1.0
BUSY_RECHECK = 60.0


@dataclasses.dataclass(frozen=True)
class Holder:
    """Our llama-server, as far as the workers are concerned."""

    pid: int
    model: str
    addresses: frozenset[str]
    ready: bool  # judge its connections (not while it loads)


class Checker:
    def __init__(self, timeout: float = PROBE_TIMEOUT):
        self.timeout = timeout
        self.interval = 5.0
        self.generation = 0  # bumped whenever what a view shows changes (each look, at least)
        self._workers: dict[str, WorkerHealth] = {}
        self._holder: Holder | None = None
        self._busy_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the lifecycle tells it ----------------------------------------------------------

    def configure(self, workers: dict[str, str], interval: float) -> None:
        """The configured workers (name -> host:port). Unchanged ones keep their history;
        the thread starts with the first worker, and looks again at once after a change."""
        with self._lock:
            self.interval = interval
            old = self._workers
            fresh = {name: old[name] if name in old and old[name].address == address else
                     WorkerHealth(name, address) for name, address in workers.items()}
            if [(w.name, w.address) for w in fresh.values()] == \
                    [(w.name, w.address) for w in old.values()]:
                return
            self._workers = fresh
            self.generation += 1
        if workers and self._thread is None:  # its first round is now
            self._thread = threading.Thread(target=self._run, name="rpc-health", daemon=True)
            self._thread.start()
        else:
            self._wake.set()

    def hold(self, holder: Holder | None) -> None:
        with self._lock:
            self._holder = holder
            changed = self._mark_in_use(holder)
        if changed:
            self._wake.set()  # a worker just freed (or taken) deserves a look now

    # --- what the lifecycle reads -------------------------------------------------------------

    def snapshot(self) -> dict[str, WorkerHealth]:
        with self._lock:
            return {name: dataclasses.replace(w) for name, w in self._workers.items()}

    def public(self) -> list[dict[str, Any]]:
        return [w.public() for w in self.snapshot().values()]

    def check_now(self, names: list[str]) -> dict[str, WorkerHealth]:
        """A round of these workers now, in the caller's thread (bounded by the timeout)."""
        self.round(names)
        return self.snapshot()

    # --- rounds -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.clear()  # a wake-up asked for before this round is this round
            try:
                self.round(None)
            except Exception:  # a bug here must not end the checks for good
                log.exception("checking the RPC workers failed")
            self._wake.wait(self.interval)

    def round(self, names: list[str] | None) -> None:
        now = time.monotonic()
        with self._lock:
            holder = self._holder
            chosen = [w for w in self._workers.values() if names is None or w.name in names]
        held = [w for w in chosen if holder is not None and w.address in holder.addresses]
        others = [w for w in chosen if w not in held and (names is not None or
                                                          self._busy_until.get(w.name, 0) <= now)]
        found: dict[str, Probe] = {}
        if held and holder is not None and holder.ready:
            found.update(_by_connection(holder, held))
        if others:
            results = probe_all([split_address(w.address) for w in others], self.timeout)
            found.update({w.name: r for w, r in zip(others, results, strict=True)})
        with self._lock:
            for name, result in found.items():
                self._apply(name, result, now)

    def _apply(self, name: str, result: Probe, now: float) -> None:
        worker = self._workers.get(name)
        if worker is None:  # removed by a reload meanwhile
            return
        before = worker.public()
        if worker.state == "busy" and result.state == "down" and result.error and \
                result.error.startswith("no answer to a connection"):
            result = Probe("busy", "it does not accept connections: another client holds "
                           "it, and earlier looks wait in its queue")
        if result.state == "busy":
            self._busy_until[name] = now + max(BUSY_RECHECK, 6 * self.interval)
        if result.state != worker.state:
            worker.since = time.time()
            if worker.state != "unchecked" or result.state != "up":
                log.info("RPC worker %s (%s) is %s%s", name, worker.address, result.state,
                         f": {result.error}" if result.error else "")
        worker.state, worker.error, worker.checked_at = result.state, result.error, time.time()
        if result.version is not None:
            worker.version = result.version
        if result.devices:
            worker.devices = [{"free": d.free, "total": d.total} for d in result.devices]
        if worker.public() != before:  # checked_at at least: the views say how fresh it is
            self.generation += 1

    def _mark_in_use(self, holder: Holder | None) -> bool:
        changed = False
        for worker in self._workers.values():
            model = holder.model if holder is not None and worker.address in \
                holder.addresses else None
            if worker.in_use != model:
                worker.in_use = model
                changed = True
        if changed:
            self.generation += 1
        return changed


def _by_connection(holder: Holder, held: list[WorkerHealth]) -> dict[str, Probe]:
    """The health of the workers our ready llama-server holds, from its own connections."""
    try:
        proc = psutil.Process(holder.pid)
        connections = getattr(proc, "net_connections", proc.connections)(kind="tcp")
    except psutil.Error:
        return {}  # it is gone or out of reach: the lifecycle sees that first
    live = {(c.raddr.ip, c.raddr.port) for c in connections
            if c.raddr and c.status == psutil.CONN_ESTABLISHED}
    out = {}
    for worker in held:
        host, port = split_address(worker.address)
        try:
            ip = socket.gethostbyname(host)
        except OSError:
            continue
        out[worker.name] = Probe("up") if (ip, port) in live else Probe(
            "down", f"llama-server ({holder.model}) lost its connection to it: the worker "
            "stopped, or its host went away")
    return out
