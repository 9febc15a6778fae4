"""The command channel between the supervisor and a worker: JSON messages framed by a 4-byte
length over one end of a socketpair.

The same code serves all three processes: in the supervisor and the lifecycle worker the socket
is a plain one (read after a selector says it is ready); in the proxy worker it is re-wrapped
after gevent's monkey-patching, so a blocking read only parks a greenlet.

Message kinds (field "type"):
  cmd    proxy -> lifecycle (via the supervisor): {"id", "cmd", ...}; answered by exactly one reply
  event  lifecycle -> proxy: progress of a command, {"id", "event", ...}
  reply  the final answer to a cmd: {"id", "ok", ...}
  state  lifecycle -> proxy broadcast: {"backend": {...}} after every backend change
  workers  supervisor -> proxy: worker pids and restart counts
  control  supervisor -> worker: {"action": "reload" | "shutdown"}
  ready    proxy -> supervisor: serving (a graceful restart then retires the old worker)

Command ids from a proxy worker are `p<pid>-<n>`, so replies reach the worker that asked even
while an old one is being retired.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

MAX_MESSAGE = 4 * 1024 * 1024
_HEADER = struct.Struct("!I")


class ChannelClosed(Exception):
    pass


class Channel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buf = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message, separators=(",", ":")).encode()
        if len(payload) > MAX_MESSAGE:
            raise ValueError(f"message of {len(payload)} bytes exceeds the channel's limit")
        try:
            self.sock.sendall(_HEADER.pack(len(payload)) + payload)
        except OSError as e:
            raise ChannelClosed(str(e)) from None

    def receive(self) -> list[dict[str, Any]]:
        """Read once (blocks until data unless the caller knows it is readable) and return
        every complete message. Raises ChannelClosed at end of stream."""
        try:
            data = self.sock.recv(256 * 1024)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise ChannelClosed(str(e)) from None
        if not data:
            raise ChannelClosed("peer closed the channel")
        self._buf += data
        messages = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_MESSAGE:
                raise ChannelClosed(f"oversized message ({size} bytes): protocol error")
            if len(self._buf) < _HEADER.size + size:
                break
            payload = bytes(self._buf[_HEADER.size:_HEADER.size + size])
            del self._buf[:_HEADER.size + size]
            messages.append(json.loads(payload))
        return messages

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a, b
