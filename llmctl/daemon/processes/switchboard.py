"""The supervisor's message routing between its workers:

    proxy  --command-->  supervisor  --command-->  lifecycle
    proxy  <--event/reply/state--  supervisor  <--  lifecycle

Routing is by the protocol's record types (one table per source), and replies find their way
back through `pending`, a map from command id to the proxy worker (current or retiring) that
sent it; ids are opaque. Messages for the supervisor itself (Ready, Failed, Reload,
RestartProxy) go to the handlers it registers (`own`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.processes.workers import Worker

log = logging.getLogger("llmctld")

Send = Callable[[Worker, p.Message], None]
Handler = Callable[[Worker, Any], None]


class Switchboard:
    def __init__(self, workers: dict[str, Worker], retiring: dict[int, Worker], send: Send,
                 own: Mapping[type[p.Message], Handler]):
        self.workers, self.retiring, self.send = workers, retiring, send
        # command id -> the proxy worker that sent it, until the lifecycle worker replies
        self.pending: dict[str, Worker] = {}
        self._from_proxy: dict[type[p.Message], Handler] = {
            p.Switch: self._forward, p.Stop: self._forward, p.Status: self._forward,
            p.Ensure: self._forward, p.Cache: self._forward, p.KvReuse: self._notify,
            **{k: own[k] for k in (p.Ready, p.Failed, p.Reload,
                                                              p.RestartProxy)},
        }
        self._from_lifecycle: dict[type[p.Message], Handler] = {
            p.Event: self._to_sender, p.Reply: self._to_sender, p.State: self._broadcast,
            p.RpcHealth: self._broadcast,
            **{k: own[k] for k in (p.Ready, p.Failed)},
        }

    def route(self, source: Worker, message: p.Message) -> None:
        table = self._from_lifecycle if source.role == "lifecycle" else self._from_proxy
        handler = table.get(type(message))
        if handler is not None:
            handler(source, message)
            return
        p.dispatch({}, message, f"supervisor (from the {source.role} worker)",
                   answer=lambda reply: self.send(source, reply))

    def hand_over(self, old: Worker, new: Worker) -> None:
        """A proxy retires: the replies to its commands still go to it (`new` holds it)."""
        for rid, sender in self.pending.items():
            if sender is old:
                self.pending[rid] = new

    def cut_pending(self) -> None:
        """The lifecycle worker died: answer the commands it will never answer."""
        for rid in sorted(self.pending):
            self._answer_pending(p.error_reply(
                rid, "unavailable", "the lifecycle worker stopped while handling this "
                "request; retry in a moment", retryable=True))

    def forget_sender(self, pid: int) -> None:
        for rid in [rid for rid, w in self.pending.items() if w.pid == pid or w.pid is None]:
            del self.pending[rid]

    def _forward(self, source: Worker, message: p.Command) -> None:
        lifecycle = self.workers["lifecycle"]
        if message.id in self.pending:
            self.send(source, p.error_reply(message.id, "bad_message",
                                            f"command id {message.id!r} is already in use"))
            return
        if lifecycle.channel is None:
            self.send(source, p.error_reply(message.id, "unavailable", "the lifecycle worker "
                                            "is restarting; retry in a moment",
                                            retryable=True))
            return
        self.pending[message.id] = source
        self.send(lifecycle, message)

    def _notify(self, source: Worker, message: p.Message) -> None:
        """A proxy's notice for the lifecycle worker, which nobody waits on: dropped while
        that worker restarts."""
        lifecycle = self.workers["lifecycle"]
        if lifecycle.channel is not None:
            self.send(lifecycle, message)

    def _to_sender(self, source: Worker, message: p.Event | p.Reply) -> None:
        if isinstance(message, p.Reply):
            self._answer_pending(message)
            return
        sender = self.pending.get(message.id)
        if sender is not None:
            self.send(sender, message)

    def _answer_pending(self, reply: p.Reply) -> None:
        sender = self.pending.pop(reply.id, None)
        if sender is None:
            log.debug("reply for %s, which nobody waits for (its worker is gone)", reply.id)
            return
        self.send(sender, reply)

    def _broadcast(self, source: Worker, message: p.State | p.RpcHealth) -> None:
        for worker in [self.workers["proxy"], *self.retiring.values()]:
            self.send(worker, message)
