"""The command channel between the supervisor and a worker: JSON messages framed by a 4-byte
length over one end of a socketpair. What the messages mean is protocol.py's business: this
module moves frames and says when the stream can no longer be trusted.

The same code serves all three processes: in the supervisor and the lifecycle worker the socket
is a plain one (read after a selector says it is ready); in the proxy worker it is re-wrapped
after gevent's monkey-patching, so a blocking read only parks a greenlet.

Two ways a channel ends, both raised as exceptions:
- ChannelClosed: the peer went away (end of stream, EPIPE, ECONNRESET);
- ChannelBroken (a ChannelClosed too, so code that only cares "is it usable" catches one
  thing): the stream is out of step and cannot be resynchronised — a send timed out (the
  peer does not read; part of a frame may be written), a frame is oversized or not JSON. The
  supervisor answers it by restarting that worker.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
from typing import Any

from llmctl.daemon.ipc.protocol import Message, decode, encode

MAX_MESSAGE = 4 * 1024 * 1024
_HEADER = struct.Struct("!I")
_PEER_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)


class ChannelClosed(Exception):
    pass


class ChannelBroken(ChannelClosed):
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
        except TimeoutError:
            raise ChannelBroken("the peer is not reading its channel (send timed out)") from None
        except OSError as e:
            if e.errno in _PEER_GONE:
                raise ChannelClosed(str(e)) from None
            raise ChannelBroken(f"cannot write to the channel: {e}") from None

    def receive(self) -> list[dict[str, Any]]:
        """Read once (blocks until data unless the caller knows it is readable) and return
        every complete message. Raises ChannelClosed at end of stream, ChannelBroken for a
        frame that is oversized or not JSON."""
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
                raise ChannelBroken(f"oversized message ({size} bytes): protocol error")
            if len(self._buf) < _HEADER.size + size:
                break
            payload = bytes(self._buf[_HEADER.size:_HEADER.size + size])
            del self._buf[:_HEADER.size + size]
            try:
                messages.append(json.loads(payload))
            except (ValueError, UnicodeDecodeError):
                raise ChannelBroken(f"undecodable frame ({payload[:40]!r}...): protocol "
                                    "error") from None
        return messages

    # --- typed records (protocol.py) ----------------------------------------------------------

    def post(self, message: Message) -> None:
        self.send(encode(message))

    def messages(self) -> list[Message]:
        """receive(), decoded: a frame that is JSON but no valid message comes back as
        protocol.Malformed for the receiver to log and answer."""
        return [decode(raw) for raw in self.receive()]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a, b
