"""One look at a llama.cpp rpc-server over TCP: does it listen, does it answer the RPC hello,
and what devices (with their memory) does it offer. `llmctl worker` asks it whether the
rpc-server it started is ready; llmctld's health checks (daemon/rpc/health.py) ask it about
every configured worker.

The wire format is llama.cpp's (ggml/src/ggml-rpc/ggml-rpc.cpp, protocol 7): a request is
one command byte, a little-endian u64 size and that many bytes; an answer is a u64 size and
that many bytes. HELLO (14) carries 24 bytes of transport capabilities (zeros: plain TCP) and
answers major, minor, patch, a pad byte and 24 bytes of capabilities; DEVICE_COUNT (15)
answers a u32; GET_DEVICE_MEMORY (11) takes a u32 device and answers free and total (u64).
Those commands change nothing on the server.

What a probe must not do: rpc-server serves ONE client at a time and listens with a backlog
of one. A probe that connects while a llama-server is being served is accepted by the kernel
but not by rpc-server: its hello goes unanswered (`busy`) and the connection waits in the
queue until that client leaves. Two such waiting connections fill the queue, after which
every new connection, the next llama-server's too, times out. So callers never probe a
worker their own llama-server holds (daemon/rpc/health.py watches that llama-server's own
connection instead), and a busy answer is a reason to probe less, not more.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

PROTOCOL_MAJOR = 7  # what llama.cpp b11434's RPC client and server speak
CMD_GET_DEVICE_MEMORY, CMD_HELLO, CMD_DEVICE_COUNT = 11, 14, 15
CAPS_SIZE = 24
MAX_DEVICES = 64  # more than any machine has: a bigger count is not an rpc-server talking


@dataclass(frozen=True)
class Device:
    free: int  # bytes
    total: int


@dataclass(frozen=True)
class Probe:
    """What one probe found. `state`: `up` (it answered the hello), `busy` (it accepted the
    connection but serves another client), or `down` (no connection, or not an rpc-server
    of a protocol we know); `error` says why when it is not up."""

    state: str
    error: str | None = None
    version: str | None = None
    devices: tuple[Device, ...] = field(default_factory=tuple)

    @property
    def up(self) -> bool:
        return self.state == "up"


class _Answer(Exception):
    """The probe is over early, with this result."""

    def __init__(self, result: Probe):
        self.result = result


def probe(host: str, port: int, timeout: float = 1.0) -> Probe:
    """Connect, say hello, read the devices; never longer than `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    try:
        sock = _connect(host, port, timeout)
    except _Answer as answer:
        return answer.result
    try:
        return _talk(sock, deadline, timeout)
    except _Answer as answer:
        return answer.result
    finally:
        sock.close()


def probe_all(targets: list[tuple[str, int]], timeout: float = 1.0) -> list[Probe]:
    """Probe several workers at once (one short-lived thread each): the whole look takes
    `timeout` at most, however many workers there are."""
    if len(targets) == 1:
        return [probe(*targets[0], timeout)]
    results: list[Probe] = [Probe("down", "not checked")] * len(targets)

    def one(i: int, host: str, port: int) -> None:
        results[i] = probe(host, port, timeout)

    threads = [threading.Thread(target=one, args=(i, h, p), daemon=True,
                                name=f"rpc-probe {h}:{p}") for i, (h, p) in enumerate(targets)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 0.5  # each probe bounds itself; this is a guard
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return results


def split_address(address: str) -> tuple[str, int]:
    """`host:port` as llama.cpp parses it (IPv4 or a name: the first `:` splits)."""
    host, _, port = address.partition(":")
    return host, int(port)


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        # IPv4 only, like llama.cpp's RPC client and server
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise _Answer(Probe("down", f"cannot resolve {host!r}: {e.strerror}")) from None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    try:
        sock.connect(infos[0][4])
    except ConnectionRefusedError:
        sock.close()
        raise _Answer(Probe("down", "connection refused (nothing listens there)")) from None
    except TimeoutError:
        sock.close()
        raise _Answer(Probe("down", f"no answer to a connection within {timeout:g}s (the "
                            "host is down, a firewall drops it, or its queue is full)")) from None
    except OSError as e:
        sock.close()
        raise _Answer(Probe("down", f"cannot connect: {e.strerror or e}")) from None
    return sock


def _talk(sock: socket.socket, deadline: float, timeout: float) -> Probe:
    hello = _ask(sock, deadline, CMD_HELLO, bytes(CAPS_SIZE), 4 + CAPS_SIZE, busy_after=timeout)
    major, minor, patch = hello[0], hello[1], hello[2]
    version = f"{major}.{minor}.{patch}"
    if major != PROTOCOL_MAJOR:
        return Probe("down", f"it speaks RPC protocol {version}; this llama.cpp speaks "
                     f"{PROTOCOL_MAJOR}.x: run the same llama.cpp build on both sides", version)
    (count,) = struct.unpack("<I", _ask(sock, deadline, CMD_DEVICE_COUNT, b"", 4))
    if count > MAX_DEVICES:
        return Probe("down", f"it claims {count} devices: not an rpc-server answer", version)
    devices = []
    for index in range(count):
        free, total = struct.unpack("<QQ", _ask(sock, deadline, CMD_GET_DEVICE_MEMORY,
                                                struct.pack("<I", index), 16))
        devices.append(Device(free, total))
    return Probe("up", None, version, tuple(devices))


def _ask(sock: socket.socket, deadline: float, command: int, payload: bytes, size: int,
         busy_after: float | None = None) -> bytes:
    """Send one command and read its answer of `size` bytes before the deadline. The first
    one (the hello) going unanswered means another client holds the server."""
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(bytes([command]) + struct.pack("<Q", len(payload)) + payload)
        answer = _read(sock, deadline, 8 + size)
    except TimeoutError:
        if busy_after is not None:
            raise _Answer(Probe("busy", f"it accepted the connection but did not answer "
                                f"within {busy_after:g}s: rpc-server serves one client at a "
                                "time, and another client holds it")) from None
        raise _Answer(Probe("down", "it stopped answering in the middle of a probe")) from None
    except OSError as e:
        raise _Answer(Probe("down", f"the connection failed: {e.strerror or e}")) from None
    if answer is None or struct.unpack("<Q", answer[:8])[0] != size:
        raise _Answer(Probe("down", "it closed the connection or answered something else: "
                            f"not an rpc-server, or one whose protocol is not "
                            f"{PROTOCOL_MAJOR}.x"))
    return answer[8:]


def _read(sock: socket.socket, deadline: float, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
