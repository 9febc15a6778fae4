"""Helpers shared by the unit tests (no daemons, no network, no llama-server)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_text(tmp_path: Path) -> Callable[[str, str], Path]:
    """write_text("dir/file.yaml", text) -> the path under tmp_path, text dedented."""

    def write(relative: str, text: str) -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return write
