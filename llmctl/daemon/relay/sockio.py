"""Socket calls for the proxy's hot path, with fewer syscalls than gevent's general ones.

gevent's socket methods are written for any use; on the relay's path three of their habits
cost a syscall (and some Python) per request or per SSE event for nothing:

- `recv_into` reads first and waits only after a failed read. Between two events of a
  generation, and right after a request was sent, nothing is there yet: the failed recv and
  the BlockingIOError raised and caught for it are paid every time. `SocketReader` waits
  first; a socket that is already readable is read in the same turn of the event loop, so
  nothing waits longer. It also keeps the socket's timeout without a new timer per wait.
- `sendall` asks the kernel for the socket's send buffer size before every write.
  `send_all` tries one plain send first (a client's or llama-server's buffer is seldom full).
- `select.select([sock], [], [], 0)`, patched, also yields to the hub. `idle_and_open`
  peeks instead, without blocking or yielding.

They wait through the hub on the socket's own read watcher (the one its recv_into waits on)
and read the plain socket inside it, when the socket is a gevent one; any other socket gets
the standard calls.
"""

from __future__ import annotations

import socket
from typing import Any


def _gevent_parts(sock: Any) -> tuple[Any, Any, Any] | None:
    """(the plain socket inside, its read watcher, its hub) of a gevent socket, else None."""
    raw, watcher, hub = (getattr(sock, name, None) for name in ("_sock", "_read_event", "hub"))
    if raw is None or watcher is None or hub is None:
        return None
    return raw, watcher, hub


class SocketReader:
    """Waits and reads for a socket whose next bytes are usually not there yet: `wait()` until
    it is readable, `recv_into(view)` after such a wait. `close()` it with the socket.

    The socket's timeout (as set when the reader is made) still bounds each wait, but checked
    lazily, the way libev suggests for idle timeouts: gevent's own wait creates, arms and
    disarms a Timeout for every read, which was the largest piece of the relay's Python per
    SSE event. Here one repeating timer looks every `timeout` seconds whether a wait ended
    since it last looked, and if none did while one is waiting, that wait raises TimeoutError
    as a socket timeout would: between one and two timeouts after the last byte."""

    def __init__(self, sock: Any):
        self.woken = 0  # waits that ended (what the timer looks at)
        self._timer: Any = None
        parts = _gevent_parts(sock)
        if parts is None:  # a plain socket: its own blocking calls
            self.wait = lambda: None
            self.recv_into = sock.recv_into
            return
        raw, watcher, hub = parts
        hub_wait, raw_recv_into = hub.wait, raw.recv_into
        timeout = sock.gettimeout()
        if timeout:
            self._timer = hub.loop.timer(timeout, timeout, ref=False)
            seen = [-1]

            def look() -> None:
                if self.woken == seen[0] and watcher.callback is not None:
                    hub.cancel_wait(watcher, TimeoutError("timed out"))
                seen[0] = self.woken

            self._timer.start(look)

        def wait() -> None:
            hub_wait(watcher)
            self.woken += 1

        def recv_into(view: memoryview) -> int:
            while True:
                wait()
                try:
                    n: int = raw_recv_into(view)
                except BlockingIOError:  # woken for nothing: wait again
                    continue
                return n

        self.wait, self.recv_into = wait, recv_into

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None


def send_all(sock: Any, data: bytes | bytearray | memoryview) -> None:
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def idle_and_open(sock: Any) -> bool:
    """Whether a kept-alive connection can be reused: the peer has not closed it and has sent
    nothing (an idle one that is readable was closed, or holds junk)."""
    parts = _gevent_parts(sock)
    raw = parts[0] if parts is not None else sock
    try:
        raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except (OSError, ValueError):
        return False
    return False
