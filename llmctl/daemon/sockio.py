"""Socket calls for the proxy's hot path, with fewer syscalls than gevent's general ones.

gevent's socket methods are written for any use; on the relay's path three of their habits
cost a syscall (and some Python) per request or per SSE event for nothing:

- `recv_into` reads first and waits only after a failed read. Between two events of a
  generation, and right after a request was sent, nothing is there yet: the failed recv and
  the BlockingIOError raised and caught for it are paid every time. `wait_then_recv_into`
  and `wait_readable` wait first; a socket that is already readable is read in the same turn
  of the event loop, so nothing waits longer.
- `sendall` asks the kernel for the socket's send buffer size before every write.
  `send_all` tries one plain send first (a client's or llama-server's buffer is seldom full).
- `select.select([sock], [], [], 0)`, patched, also yields to the hub. `idle_and_open`
  peeks instead, without blocking or yielding.

They use gevent's wait on the socket's own read watcher (what its recv_into waits on, with the
socket's timeout) and the plain socket inside it, when the socket is a gevent one; any other
socket gets the standard calls.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any


def _gevent_parts(sock: Any) -> tuple[Any, Any, Any] | None:
    raw, wait, watcher = (getattr(sock, name, None) for name in ("_sock", "_wait", "_read_event"))
    if raw is None or wait is None or watcher is None:
        return None
    return raw, wait, watcher


def wait_then_recv_into(sock: Any) -> Callable[[memoryview], int]:
    """`sock.recv_into`, for a socket whose next bytes are usually not there yet."""
    parts = _gevent_parts(sock)
    if parts is None:
        return sock.recv_into
    raw, wait, watcher = parts
    raw_recv_into = raw.recv_into

    def recv_into(view: memoryview) -> int:
        while True:
            wait(watcher)
            try:
                return raw_recv_into(view)
            except BlockingIOError:  # woken for nothing: wait again
                continue

    return recv_into


def wait_readable(sock: Any) -> None:
    """Until `sock` has bytes to read (or its peer closed it, or its timeout passed)."""
    parts = _gevent_parts(sock)
    if parts is not None:
        _, wait, watcher = parts
        wait(watcher)


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
