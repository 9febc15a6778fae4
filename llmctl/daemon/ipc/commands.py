"""The proxy worker's command client: send a protocol Command, then read its Events and its
one Reply.

    pending = hub.commands.send(p.Switch, model="qwen")   # the id is filled in here
    for message in pending:          # Events, then the Reply (last)
        ...
    reply = pending.reply()          # or: skip the events, wait for the Reply only

Every wait is bounded: past the deadline (load timeout + COMMAND_SLACK) the caller gets a
synthetic `timeout` error Reply, never a hang. Ids are opaque, unique per daemon (pid and a
counter); the supervisor routes the answers back to this worker by id.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
from gevent.queue import Queue

from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.channel import Channel, ChannelClosed

COMMAND_SLACK = 60.0  # beyond load + stop timeouts, for a reply that never comes


class Pending:
    def __init__(self, rid: str, deadline: float, on_done: Callable[[str], None]):
        self.id = rid
        self.deadline = deadline
        self.queue: Queue = Queue()
        self._on_done = on_done
        self.answered = False  # the Reply has arrived (it may not be read yet)
        self.done = False  # the Reply has been read

    def next(self) -> p.Event | p.Reply:
        """The next Event, or the Reply (then the command is over)."""
        if self.done:
            raise RuntimeError(f"command {self.id} already has its reply")
        try:
            message = self.queue.get(timeout=max(0.0, self.deadline - time.monotonic()))
        except gevent.queue.Empty:
            message = p.error_reply(self.id, "timeout",
                                    "the lifecycle worker did not answer in time")
            self._on_done(self.id)
        if isinstance(message, p.Reply):
            self.done = True
        return message

    def __iter__(self) -> Iterator[p.Event | p.Reply]:
        while not self.done:
            yield self.next()

    def reply(self) -> p.Reply:
        while True:
            message = self.next()
            if isinstance(message, p.Reply):
                return message


class CommandClient:
    def __init__(self, channel: Channel, timeout: Callable[[], float],
                 on_reply: Callable[[str], None]):
        self.channel = channel
        self._timeout = timeout  # seconds a command may take (the load timeout)
        self._on_reply = on_reply  # told of every finished command id
        self._pending: dict[str, Pending] = {}
        self._ids = itertools.count(1)
        self.closed: str | None = None  # why no answer can come any more


    def send(self, kind: type[p.Command], **fields: Any) -> Pending:
        rid = f"{os.getpid()}.{next(self._ids)}"
        pending = Pending(rid, time.monotonic() + self._timeout() + COMMAND_SLACK, self._done)
        self._pending[rid] = pending
        if self.closed is not None:
            self.deliver(self._cut(rid))
            return pending
        try:
            self.channel.post(kind(id=rid, **fields))  # type: ignore[call-arg]
        except ChannelClosed:
            self.deliver(p.error_reply(rid, "unavailable", "llmctld is shutting down"))
        return pending

    def close(self, reason: str) -> None:
        """The channel ended (the supervisor died or is gone): no answer can come, so every
        command still waiting gets a retryable error now instead of waiting out its deadline
        (or the worker's drain)."""
        self.closed = reason
        for rid in list(self._pending):
            self.deliver(self._cut(rid))

    def _cut(self, rid: str) -> p.Reply:
        return p.error_reply(rid, "unavailable", "llmctld lost its supervisor "
                             f"({self.closed}); retry in a moment", retryable=True)

    def deliver(self, message: p.Event | p.Reply) -> None:
        """An Event or Reply from the channel, to the command it answers."""
        pending = self._pending.get(message.id)
        if pending is not None:
            pending.answered = pending.answered or isinstance(message, p.Reply)
            pending.queue.put(message)
        if isinstance(message, p.Reply):
            self._done(message.id)

    def _done(self, rid: str) -> None:
        self._pending.pop(rid, None)
        self._on_reply(rid)
