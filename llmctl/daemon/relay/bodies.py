"""Request bodies, received whole before anything else happens to a request.

A body is read here before a proxied request takes its lease (admission/gate.py): a client
that trickles a large upload holds a connection and, while it sends, one of
`daemon.max_large_bodies` slots, never the backend (a switch or an idle unload does not wait
for it). However it is framed (Content-Length or chunked), a body is capped while it is read:

- each piece of BODY_PIECE bytes must arrive within `daemon.body_timeout` (else 408);
- past the route's cap (`daemon.max_body` for /v1, native routes and /api; 64 KiB for the
  control API) it is refused with 413 at once, without reading the rest;
- a body over LARGE_BODY (1 MiB) takes a slot for as long as the request uses it; with none
  free the request is answered 503 with Retry-After;
- up to `in_memory` bytes it stays in memory; beyond, it is spooled to an unlinked file in
  the runtime directory (`spool/`), so a large upload costs the proxy no memory.

The caller answers a BodyError with its status and `Connection: close` (the unread rest is
not drained; wsgi_server.Handler.run_application).
"""

from __future__ import annotations

import io
import mmap
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent

from llmctl.daemon.admission.client_limits import BODY_PIECE, LARGE_BODY, MIB, ClientLimits

RETRY_AFTER = 1


class BodyError(Exception):
    """The body cannot be taken: `status` (400, 408, 413, 503), `code`, `message`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after = RETRY_AFTER if status == 503 else None


class SpooledBody:
    """A body too large to keep in memory, in an unlinked temporary file: `length` bytes,
    read from the start again for every send (a resend on a fresh upstream connection)."""

    def __init__(self, file: Any, length: int):
        self.file, self.length = file, length
        self._view: mmap.mmap | None = None

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.file.read(size)
        return data

    def rewind(self) -> None:
        self.file.seek(0)

    def view(self) -> mmap.mmap:
        """The whole body as a read-only buffer (for a scan), mapped, not read."""
        if self._view is None:
            self._view = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._view

    def close(self) -> None:
        if self._view is not None:
            self._view.close()
            self._view = None
        self.file.close()


class Received:
    """A body received whole: `data` (bytes, None without a body) or `spooled`. `close()`
    gives back its large-body slot and its file; call it when the request no longer needs
    the body (it has been sent upstream, or refused)."""

    def __init__(self, data: bytes | None, spooled: SpooledBody | None = None,
                 release: Callable[[], None] | None = None):
        self.data, self.spooled, self._release = data, spooled, release

    @property
    def body(self) -> bytes | SpooledBody | None:
        return self.spooled if self.spooled is not None else self.data

    def close(self) -> None:
        if self.spooled is not None:
            self.spooled.close()
            self.spooled = None
        if self._release is not None:
            self._release()
            self._release = None


class Bodies:
    """The proxy worker's body reader; it counts the large bodies being held at once."""

    def __init__(self, spool_dir: Path, limits: Callable[[], ClientLimits]):
        self.spool_dir, self.limits = spool_dir, limits
        self.large = 0  # large bodies being received or held

    def receive(self, environ: dict[str, Any], cap: int, in_memory: int) -> Received:
        """The request's whole body, at most `cap` bytes, in memory up to `in_memory` bytes.
        Raises BodyError."""
        limits = self.limits()
        length_text = environ.get("CONTENT_LENGTH") or ""
        chunked = environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked"
        if not length_text and not chunked:
            return Received(None)
        length: int | None = None
        if length_text:
            if not length_text.isdigit():
                raise BodyError(400, "bad_request", f"Content-Length {length_text!r} is not "
                                "a number of bytes")
            length = int(length_text)
            if length > cap:
                raise too_large(cap, f"of {length} bytes ")
            if length == 0:
                return Received(None)
        reader = _Reader(environ["wsgi.input"], length, limits.body_timeout)
        if length is not None and length <= LARGE_BODY:
            return Received(reader.read_all())
        slot = self._slot(limits) if length is not None else None
        try:
            return self._receive(reader, cap, in_memory, slot, limits)
        except BaseException:
            if slot is not None:
                slot()
            raise

    def _receive(self, reader: _Reader, cap: int, in_memory: int,
                 slot: Callable[[], None] | None, limits: ClientLimits) -> Received:
        buffer = bytearray()
        file: Any = None
        size = 0
        try:
            while piece := reader.piece():
                size += len(piece)
                if size > cap:
                    raise too_large(cap)
                if slot is None and size > LARGE_BODY:
                    slot = self._slot(limits)
                if file is None and size > in_memory:
                    file = self._spool_file()
                    file.write(buffer)
                    buffer = bytearray()
                if file is not None:
                    file.write(piece)
                else:
                    buffer += piece
        except BaseException:
            if file is not None:
                file.close()
            if slot is not None:
                slot()
            raise
        if file is None:
            return Received(bytes(buffer) if buffer else None, None, slot)
        file.flush()
        file.seek(0)
        return Received(None, SpooledBody(file, size), slot)

    def _slot(self, limits: ClientLimits) -> Callable[[], None]:
        if self.large >= limits.max_large_bodies:
            raise BodyError(503, "too_many_large_bodies", (
                f"{self.large} request bodies over {LARGE_BODY // MIB} MiB are being received "
                "or sent now, the limit (daemon.max_large_bodies); retry in a moment"))
        self.large += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.large -= 1

        return release

    def _spool_file(self) -> Any:
        self.spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return tempfile.TemporaryFile(dir=self.spool_dir)


def too_large(cap: int, size: str = "") -> BodyError:
    limit = f"{cap // MIB} MiB" if cap >= MIB and cap % MIB == 0 else f"{cap} bytes"
    key = "daemon.max_body" if cap >= MIB else "the control API's limit"
    return BodyError(413, "body_too_large", f"request body {size}exceeds {limit} ({key})")


class _Reader:
    """Reads a WSGI input in pieces, each within `timeout` seconds."""

    def __init__(self, stream: Any, length: int | None, timeout: float):
        self.stream, self.left, self.timeout = stream, length, timeout

    def piece(self) -> bytes:
        want = BODY_PIECE if self.left is None else min(BODY_PIECE, self.left)
        if want == 0:
            return b""
        timer = gevent.Timeout(self.timeout)
        timer.start()
        try:
            data: bytes = self.stream.read(want)
        except gevent.Timeout as e:
            if e is not timer:
                raise
            raise BodyError(408, "request_timeout", (
                f"the request body stopped arriving: no {BODY_PIECE // 1024} KiB within "
                "daemon.body_timeout")) from None
        except (OSError, ValueError) as e:  # a reset, or broken chunked framing
            raise BodyError(400, "bad_request_body", (
                f"the request body could not be read ({e}); a chunked body needs chunk sizes "
                "in hex digits only (optionally ;extensions), each line and each chunk's data "
                "ending in CRLF")) from None
        finally:
            timer.close()
        if self.left is not None:
            if not data:
                raise BodyError(400, "bad_request", "the request body ended before its "
                                "Content-Length")
            self.left -= len(data)
        return data

    def read_all(self) -> bytes:
        pieces = []
        while piece := self.piece():
            pieces.append(piece)
        return b"".join(pieces)  # one piece (a small body): itself, not a copy


def control_body(bodies: Bodies, environ: dict[str, Any], cap: int) -> dict[str, Any]:
    """The environ of a control request with its body (at most `cap` bytes, however framed)
    read and put back as a plain Content-Length body. Raises BodyError."""
    received = bodies.receive(environ, cap, cap)
    data = received.data or b""
    environ = {k: v for k, v in environ.items() if k != "HTTP_TRANSFER_ENCODING"}
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))
    return environ
