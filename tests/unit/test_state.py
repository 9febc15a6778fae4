"""llmctl.core.state: atomic 0600 writes; readers get (None, reason), never an exception."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from llmctl.core.state import SCHEMA_VERSION, empty_backend, read_state, write_state


def ready_backend() -> dict:
    backend = empty_backend()
    backend.update(state="ready", model="tiny", pid=4242, port=11435, host="127.0.0.1",
                   log_tail=["line 1", "line 2"], generation=3, load_seconds=1.5)
    return backend


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    backend, daemon = ready_backend(), {"pid": 99, "started_at": 1700000000.0}
    write_state(path, backend, daemon)

    data, reason = read_state(path)

    assert reason is None
    assert data == {"version": SCHEMA_VERSION, "daemon": daemon, "backend": backend}


def test_file_mode_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{}")
    path.chmod(0o644)  # an older, looser file is replaced, not reused
    write_state(path, empty_backend(), {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_temp_files_left(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    for generation in range(3):
        backend = empty_backend()
        backend["generation"] = generation
        write_state(path, backend, {})
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    data, _ = read_state(path)
    assert data is not None and data["backend"]["generation"] == 2


def test_failed_write_leaves_no_temp_file_and_keeps_the_old_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_state(path, ready_backend(), {})
    with pytest.raises(TypeError):
        write_state(path, {"state": object()}, {})  # not JSON-serialisable
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert read_state(path)[0]["backend"]["model"] == "tiny"


def test_missing_file(tmp_path: Path) -> None:
    assert read_state(tmp_path / "state.json") == (None, None)


def test_missing_fields_are_filled_and_unknown_ones_dropped(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": SCHEMA_VERSION, "daemon": {},
                                "backend": {"state": "starting", "model": "m", "bogus": 1}}))
    data, reason = read_state(path)
    assert reason is None
    assert data["backend"] == {**empty_backend(), "state": "starting", "model": "m"}


def _truncated(path: Path) -> bytes:
    write_state(path, ready_backend(), {"pid": 1})
    return path.read_bytes()[: len(path.read_bytes()) // 2]


@pytest.mark.parametrize("content, reason_part", [
    (b"{not json", "corrupt"),
    (b"", "corrupt"),
    (b"\xff\xfe\x00garbage", "corrupt"),
    (None, "corrupt"),  # a torn write: the first half of a real state file
    (json.dumps([1, 2, 3]).encode(), "unknown layout"),
    (json.dumps({"version": SCHEMA_VERSION + 1, "daemon": {},
                 "backend": empty_backend()}).encode(), "unknown layout"),
    (json.dumps({"daemon": {}, "backend": empty_backend()}).encode(), "unknown layout"),
    (json.dumps({"version": SCHEMA_VERSION, "daemon": {}, "backend": "ready"}).encode(),
     "unknown layout"),
    (json.dumps({"version": SCHEMA_VERSION, "daemon": {},
                 "backend": {**empty_backend(), "state": "exploded"}}).encode(),
     "unknown backend state"),
])
def test_bad_files_give_a_reason(tmp_path: Path, content: bytes | None,
                                 reason_part: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(_truncated(path) if content is None else content)

    data, reason = read_state(path)

    assert data is None
    assert reason is not None
    assert str(path) in reason
    assert reason_part in reason


def test_unreadable_path_gives_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # reading a directory fails with an OSError other than "not found"
    data, reason = read_state(path)
    assert data is None
    assert reason is not None and reason.startswith(f"cannot read {path}")
