"""The proxy worker process: gevent's WSGI server on the socket inherited from the supervisor.

Order matters (as in gunicorn's gevent worker): monkey-patch first, in the child only, then
re-wrap the inherited listening socket and channel as gevent sockets, then serve, and tell the
supervisor it is ready (a graceful restart retires the old worker only then). Either way it
stops accepting (the supervisor's copy of the socket keeps the port open, so new connections
go to the successor) and answers every request still reaching it with `Connection: close`.

- SIGUSR2, retire (a graceful restart): wait for every connection, so kept-alive clients move
  to the successor one by one. Closing an idle kept-alive connection ourselves would race
  with a client sending on it; only connections silent for DRAIN_SECONDS are dropped.
- SIGTERM, shut down: wait only for requests in progress (DRAIN_SECONDS at most), then go.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from llmctl.core.config import GlobalConfig
from llmctl.core.paths import Paths

DRAIN_SECONDS = 10.0
log = logging.getLogger("llmctld.proxy")


SWITCH_INTERVAL = 0.001  # seconds; see run()


def run(listener: socket.socket, sock: socket.socket, paths: Paths,
        daemon_info: dict[str, Any], config: GlobalConfig) -> int:
    from llmctl.daemon.processes import slim

    slim.bare_package("werkzeug")  # routing and wrappers, not the dev server and test client
    slim.bare_package("prometheus_client")  # the counters, not every exporter
    with slim.without_ssl():
        monkey_patch()
        # The loop thread relays every stream; the catalogue is read in a thread of gevent's
        # pool (api/config_view.py). While that thread runs Python, the loop waits for the GIL
        # after each of its system calls, up to the switch interval (5 ms by default) each
        # time: with several calls per relayed chunk, a scan of a thousand config files
        # stretched the gaps of every stream. 1 ms keeps them short; the cost is more switches
        # during a scan.
        sys.setswitchinterval(SWITCH_INTERVAL)
        import gevent
        import gevent.event
        import gevent.pool

        from llmctl.daemon.api.app import App
        from llmctl.daemon.api.hub import Hub
        from llmctl.daemon.ipc import protocol as p
        from llmctl.daemon.ipc.channel import Channel, ChannelClosed
        from llmctl.daemon.observe.observer import install as observe
        from llmctl.daemon.processes import imported
        from llmctl.daemon.processes.wsgi_server import ErrorLog, Handler, Server
        from llmctl.daemon.relay import headers

    headers.install()  # the request's and llama-server's header blocks, parsed faster
    server_sock = socket.socket(listener.family, listener.type, fileno=listener.detach())
    channel = Channel(socket.socket(sock.family, sock.type, fileno=sock.detach()))
    hub = Hub(channel, paths, daemon_info, config)
    # a Pool without a size: without one, server.stop() does not wait for requests in
    # progress; the Server itself bounds the connections (daemon.max_connections: a 503)
    app = observe(App(hub), hub, paths.runtime, hub.config.config.data["observability"])
    server = Server(server_sock, app, handler_class=Handler, spawn=gevent.pool.Pool(),
                    log=None, error_log=ErrorLog())
    server.limits = lambda: hub.config.limits  # read at each connection: a reload applies
    raise_file_limit(hub.config.limits.max_connections)
    hub.start()
    stopped = gevent.event.Event()

    def retire() -> None:
        if not server.closed:
            server.stop(timeout=DRAIN_SECONDS)  # stop accepting, wait for every connection
            stopped.set()

    def stop() -> None:
        if server.closed and stopped.is_set():
            return
        server.close()
        deadline = time.monotonic() + DRAIN_SECONDS
        while server.busy and time.monotonic() < deadline:
            gevent.sleep(0.02)
        server.stop(timeout=0)  # what is left is idle: drop it
        stopped.set()

    def stop_when_orphaned() -> None:
        hub.closed.wait()
        stop()

    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(stop))
    gevent.signal_handler(signal.SIGUSR2, lambda: gevent.spawn(retire))
    gevent.spawn(stop_when_orphaned)
    server.start()
    try:
        channel.post(p.Ready(os.getpid()))
    except ChannelClosed:
        stop()
    imported.dump("proxy")
    slim.give_back_free_memory()
    stopped.wait()
    if hasattr(app, "flush"):  # the observer: write the metrics still in memory
        app.flush()
    return 0


def raise_file_limit(connections: int) -> None:
    """Each client connection is a descriptor, and a proxied one a second (its upstream): lift
    the soft limit towards the hard one so that daemon.max_connections, not EMFILE, is what a
    crowd of clients meets first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit to %d: %s", target, e)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("the open-file limit is below what daemon.max_connections %d may need "
                    "(%d); lower it, or raise `ulimit -n`", connections, wanted)


def monkey_patch() -> None:
    """gevent's monkey.patch_all(), without asking installed packages for gevent plugins, and
    without ssl (slim.without_ssl: nothing here speaks TLS).

    patch_all announces each step to gevent plugins: zope.event subscribers in this process,
    and every installed distribution's `gevent.plugins.*` entry points, for which
    importlib.metadata reads the metadata of every installed package (~25 times; once each
    even when cached: ~2 MB and tens of ms of a proxy start, which is a gap in service).
    llmctl registers no plugin, and the only one gevent ships (a warning for patching
    signal without os) does not apply to patch_all's defaults. So while patching, gevent's
    announcement goes to the subscribers alone (`gevent.events.notify`, its public
    function). tests/unit/test_pinned_internals.py fails if gevent stops announcing through
    `gevent.events.notify_and_call_entry_points`."""
    from gevent import events, monkey

    announce = events.notify_and_call_entry_points
    events.notify_and_call_entry_points = events.notify
    try:
        monkey.patch_all(ssl=False)
    finally:
        events.notify_and_call_entry_points = announce
