"""The proxy worker's side of the daemon, split by job and wired together here:

- `hub.backend`  BackendView: the mirror of the backend record (`hub.backend.backend.state`)
- `hub.config`   ConfigView: global config, model catalog, Host/Origin guard
- `hub.commands` CommandClient: send a command to the lifecycle worker or the supervisor
- `hub.gate`     Gate: leases for proxied requests, the busy rule, switch/stop admission
- `hub.workers`  the supervisor's latest Workers message (pids, restarts)
- `hub.rpc`      RpcView: the RPC workers' health, from the lifecycle's RpcHealth messages
- `hub.memory`   MemoryListing: what each model needs and whether it fits (daemon/memory/)
- `hub.bodies`   Bodies: request bodies received whole, capped and timed (relay/bodies.py)

A reader greenlet feeds every channel message to the table in `_table`: adding a message kind
the proxy receives means adding one entry there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from llmctl.core.config import GlobalConfig
from llmctl.core.paths import Paths
from llmctl.daemon.admission.gate import Gate
from llmctl.daemon.api.backend_view import BackendView
from llmctl.daemon.api.config_view import ConfigView
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.channel import Channel, ChannelClosed
from llmctl.daemon.ipc.commands import CommandClient
from llmctl.daemon.relay.bodies import Bodies
from llmctl.daemon.rpc.view import RpcView

if TYPE_CHECKING:
    from llmctl.daemon.memory.listing import MemoryListing

log = logging.getLogger("llmctld.proxy")


class Hub:
    def __init__(self, channel: Channel, paths: Paths, daemon_info: dict[str, Any],
                 config: GlobalConfig):
        self.channel = channel
        self.paths = paths
        self.daemon_info = daemon_info
        self.workers: dict[str, Any] = {}
        self.rpc = RpcView()
        # called with every channel message before it is dispatched (daemon/observe/observer.py's
        # metrics count switch outcomes, load times and idle unloads from them)
        self.listeners: list[Callable[[p.Message], None]] = []
        self.closed = Event()
        self.backend = BackendView(paths)
        # the catalog is read in a thread of gevent's pool: a thousand config files, or a
        # slow disk, must not stall every stream this worker relays
        self.config = ConfigView(paths, daemon_info, config, gevent.get_hub().threadpool.apply)
        self.commands = CommandClient(channel, lambda: self.config.ready_timeout,
                                      on_reply=lambda rid: self.gate.finished(rid))
        self.gate = Gate(self.backend, self.commands, self.config)
        self.bodies = Bodies(paths.runtime / "spool", lambda: self.config.limits)
        self._memory: MemoryListing | None = None
        self._table: dict[type[p.Message], Any] = {
            p.State: lambda m: self.backend.apply(m.backend),
            p.Event: self.commands.deliver,
            p.Reply: self.commands.deliver,
            p.Workers: lambda m: setattr(self, "workers", m.workers),
            p.RpcHealth: lambda m: self.rpc.apply(m.workers),
            p.ReloadConfig: lambda m: gevent.spawn(self.config.refresh),  # not in the reader
        }

    @property
    def memory(self) -> MemoryListing:
        """Built at the first listing that shows memory (the estimator, free-memory and GPU
        probes are imports a proxy start need not wait for)."""
        if self._memory is None:
            from llmctl.daemon.memory.listing import MemoryListing

            self._memory = MemoryListing(self.paths, lambda: self.backend.backend.pid,
                                         gevent.spawn)
        return self._memory

    def start(self) -> None:
        gevent.spawn(self._read_channel)
        self.gate.scheduler.start()
        status = self.commands.send(p.Status)  # state.json may lag behind a load in progress

        def first_look() -> None:
            reply = status.reply()
            if reply.ok and isinstance(reply.data.get("backend"), dict):
                self.backend.apply(reply.data["backend"], only_newer=True)
            if reply.ok and isinstance(reply.data.get("rpc_workers"), list):
                self.rpc.apply(reply.data["rpc_workers"])

        gevent.spawn(first_look)

    def _read_channel(self) -> None:
        try:
            while True:
                for message in self.channel.messages():
                    for listener in self.listeners:
                        listener(message)
                    p.dispatch(self._table, message, "proxy worker")
        except ChannelClosed as e:
            log.warning("the channel to the supervisor ended (%s); the proxy worker stops", e)
            self.commands.close(str(e))
            self.backend.notify()  # requests waiting for a load hear it at once
            self.closed.set()
