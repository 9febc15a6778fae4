"""backend.fingerprint: what makes two launches the same for a saved cache or an estimate."""

from __future__ import annotations

import os
from pathlib import Path

from llmctl.daemon.backend.fingerprint import fingerprint, relevant_args

IGNORE = {"--host": 1, "--port": 1, "--metrics": 0}


def launch(tmp_path: Path, *args: str) -> list[str]:
    return [str(tmp_path / "llama-server"), "-m", str(tmp_path / "m.gguf"), *args]


def files(tmp_path: Path) -> list[Path]:
    for name in ("llama-server", "m.gguf"):
        (tmp_path / name).write_bytes(b"x")
    return [tmp_path / "m.gguf"]


def test_ignored_flags_and_their_values_do_not_count() -> None:
    assert relevant_args(["bin", "--host", "127.0.0.1", "-c", "2048", "--metrics", "--port",
                          "1"], IGNORE) == ["-c", "2048"]


def test_where_it_listens_does_not_change_it_the_context_does(tmp_path: Path) -> None:
    f = files(tmp_path)
    a = fingerprint(launch(tmp_path, "-c", "2048", "--port", "1"), f, IGNORE)
    assert a == fingerprint(launch(tmp_path, "-c", "2048", "--port", "2", "--metrics"), f, IGNORE)
    assert a != fingerprint(launch(tmp_path, "-c", "4096", "--port", "1"), f, IGNORE)


def test_a_replaced_model_file_or_binary_changes_it(tmp_path: Path) -> None:
    f = files(tmp_path)
    before = fingerprint(launch(tmp_path), f, IGNORE)
    (tmp_path / "m.gguf").write_bytes(b"other weights")
    after_model = fingerprint(launch(tmp_path), f, IGNORE)
    os.utime(tmp_path / "llama-server", ns=(1, 1))
    assert len({before, after_model, fingerprint(launch(tmp_path), f, IGNORE)}) == 3
