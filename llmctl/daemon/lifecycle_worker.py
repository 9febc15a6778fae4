"""The lifecycle worker process: a plain (non-gevent) loop that feeds channel messages to
core.lifecycle.Lifecycle and gives it time to poll the backend in between."""

from __future__ import annotations

import logging
import selectors
import signal
import socket
from typing import Any

from llmctl.core.lifecycle import Lifecycle
from llmctl.core.paths import Paths
from llmctl.daemon.channel import Channel, ChannelClosed

log = logging.getLogger("llmctld.lifecycle")


def run(sock: socket.socket, paths: Paths, daemon_info: dict[str, Any],
        load_default: bool = False) -> int:
    channel = Channel(sock)
    terminate = []
    # Ctrl-C reaches the whole foreground group: the supervisor decides, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: terminate.append(True))

    def emit(message: dict[str, Any]) -> None:
        if message.get("type") == "log":
            getattr(log, message.get("level", "info"))(message["message"])
            return
        channel.send(message)

    lifecycle = Lifecycle(paths, emit, daemon_info)
    for note in lifecycle.boot():
        log.info(note)
    if load_default:
        _load_default_on_startup(lifecycle, paths)
    selector = selectors.DefaultSelector()
    selector.register(channel.fileno(), selectors.EVENT_READ)
    try:
        while not lifecycle.finished:
            if terminate:
                lifecycle.shutdown()
                break
            if selector.select(lifecycle.next_timeout()):
                try:
                    messages = channel.receive()
                except ChannelClosed:
                    # The supervisor is gone (killed?). Leave the backend running: the next
                    # llmctld adopts it through state.json.
                    log.warning("supervisor went away; leaving llama-server for adoption")
                    return 0
                for message in messages:
                    lifecycle.handle(message)
            lifecycle.tick()
    except ChannelClosed:
        log.warning("supervisor went away; leaving llama-server for adoption")
    return 0


def _load_default_on_startup(lifecycle: Lifecycle, paths: Paths) -> None:
    from llmctl.core.config import ConfigError, load_global

    try:
        daemon_cfg = load_global(paths.config_file).data["daemon"]
    except ConfigError:
        return
    model = daemon_cfg["default_model"]
    if daemon_cfg["load_default_on_startup"] and model and lifecycle.proc is None:
        log.info("loading the default model %s (daemon.load_default_on_startup)", model)
        lifecycle.switch("startup", model)
