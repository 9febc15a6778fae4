"""relay/bodies.py on in-memory streams: caps however framed, the spool, the large-body slots,
the per-piece deadline."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import gevent
import pytest

from llmctl.daemon.admission.client_limits import MIB, ClientLimits
from llmctl.daemon.relay.bodies import Bodies, BodyError, SpooledBody, control_body


def _bodies(tmp_path: Path, **limits: Any) -> Bodies:
    made = ClientLimits(**limits)
    return Bodies(tmp_path / "spool", lambda: made)


def _chunked(data: bytes) -> dict[str, Any]:
    return {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(data)}


def _sized(data: bytes, length: int | None = None) -> dict[str, Any]:
    return {"CONTENT_LENGTH": str(len(data) if length is None else length),
            "wsgi.input": io.BytesIO(data)}


def test_no_body(tmp_path: Path) -> None:
    assert _bodies(tmp_path).receive({"wsgi.input": io.BytesIO(b"x")}, MIB, MIB).body is None
    assert _bodies(tmp_path).receive(_sized(b""), MIB, MIB).body is None


def test_a_chunked_body_past_the_cap_is_refused_while_it_is_read(tmp_path: Path) -> None:
    stream = io.BytesIO(b"x" * (10 * MIB))
    with pytest.raises(BodyError) as e:
        _bodies(tmp_path).receive({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": stream},
                                  64 * 1024, 64 * 1024)
    assert e.value.status == 413 and "65536 bytes" in e.value.message
    assert stream.tell() <= 2 * 64 * 1024  # it stopped reading at the cap


def test_a_declared_length_past_the_cap_is_refused_unread(tmp_path: Path) -> None:
    with pytest.raises(BodyError) as e:
        _bodies(tmp_path).receive(_sized(b"", 3 * MIB), 2 * MIB, MIB)
    assert e.value.status == 413 and "2 MiB" in e.value.message
    assert "daemon.max_body" in e.value.message


def test_bad_and_short_lengths(tmp_path: Path) -> None:
    for environ in (_sized(b"", -1), {"CONTENT_LENGTH": "1e3", "wsgi.input": io.BytesIO()}):
        with pytest.raises(BodyError) as e:
            _bodies(tmp_path).receive(environ, MIB, MIB)
        assert e.value.status == 400
    with pytest.raises(BodyError) as e:
        _bodies(tmp_path).receive(_sized(b"abc", 10), MIB, MIB)
    assert e.value.status == 400 and "Content-Length" in e.value.message


def test_large_bodies_are_spooled_and_hold_a_slot_until_closed(tmp_path: Path) -> None:
    bodies = _bodies(tmp_path, max_large_bodies=1)
    data = bytes(range(256)) * (12 * 1024)  # 3 MiB
    first = bodies.receive(_chunked(data), 64 * MIB, MIB)
    assert isinstance(first.body, SpooledBody) and first.body.length == len(data)
    assert bytes(first.body.view()) == data
    first.body.rewind()
    assert first.body.read() == data
    with pytest.raises(BodyError) as e:  # the one slot is taken
        bodies.receive(_sized(data), 64 * MIB, MIB)
    assert e.value.status == 503 and e.value.retry_after == 1
    assert bodies.receive(_sized(b"small"), 64 * MIB, MIB).data == b"small"  # not counted
    first.close()
    second = bodies.receive(_sized(data), 64 * MIB, 8 * MIB)
    assert second.data == data and second.spooled is None  # in memory up to in_memory
    second.close()
    assert bodies.large == 0


def test_a_refused_body_gives_its_slot_back(tmp_path: Path) -> None:
    bodies = _bodies(tmp_path, max_large_bodies=1)
    with pytest.raises(BodyError):
        bodies.receive(_chunked(b"x" * (5 * MIB)), 2 * MIB, MIB)
    assert bodies.large == 0


class _Stalling(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        gevent.sleep(5)
        return b""


def test_a_stalled_piece_is_a_408(tmp_path: Path) -> None:
    with pytest.raises(BodyError) as e:
        _bodies(tmp_path, body_timeout=0.05).receive(
            {"CONTENT_LENGTH": "10", "wsgi.input": _Stalling()}, MIB, MIB)
    assert e.value.status == 408 and "daemon.body_timeout" in e.value.message


def test_control_body_is_put_back_with_a_length(tmp_path: Path) -> None:
    environ = control_body(_bodies(tmp_path), {**_chunked(b'{"a": 1}'), "PATH_INFO": "/x"},
                           64 * 1024)
    assert environ["CONTENT_LENGTH"] == "8" and "HTTP_TRANSFER_ENCODING" not in environ
    assert environ["wsgi.input"].read() == b'{"a": 1}' and environ["PATH_INFO"] == "/x"
