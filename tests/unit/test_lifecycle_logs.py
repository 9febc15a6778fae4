"""The per-model log bound: rotated at start when too big, cut to its tail while running."""

from __future__ import annotations

from pathlib import Path

from llmctl.core.log_file import bound_log, read_log_tail, rotate_log


def test_running_log_is_cut_to_its_newest_part(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("".join(f"line {i}\n" for i in range(20_000)))
    bound_log(log, 64 * 1024)
    text = log.read_text()
    assert len(text) <= 64 * 1024
    assert text.startswith("--- llmctl: log truncated")
    assert text.rstrip().endswith("line 19999")


def test_small_log_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("short\n")
    bound_log(log, 64 * 1024)
    assert log.read_text() == "short\n"


def test_big_log_is_rotated_before_a_start(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_bytes(b"x" * 100_000)
    rotate_log(log, 64 * 1024)
    assert not log.exists() and (tmp_path / "m.log.1").stat().st_size == 100_000


def test_log_tail_reads_only_this_run(tmp_path: Path) -> None:
    log = tmp_path / "m.log"
    log.write_text("old run\n")
    offset = log.stat().st_size
    with open(log, "a") as f:
        f.write("new 1\n\nnew 2\n")
    assert read_log_tail(log, offset) == ["new 1", "new 2"]
    assert read_log_tail(log, 0, lines=1) == ["new 2"]
