"""The daemon.* client limits: their defaults, what a config file may set, what it may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.core.config import ConfigError, load_global
from llmctl.daemon.admission.client_limits import MIB, ClientLimits


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config" / "default.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    limits = ClientLimits.of(load_global(tmp_path / "absent.yaml"))
    assert limits == ClientLimits(header_timeout=10, keepalive_timeout=60, body_timeout=30,
                                  max_connections=512, max_body=64 * MIB, max_large_bodies=8)


def test_set_in_the_config_file(tmp_path: Path) -> None:
    config = load_global(_write(tmp_path, "daemon:\n  header_timeout: 500ms\n"
                                "  keepalive_timeout: 2m\n  body_timeout: 5\n"
                                "  max_connections: 64\n  max_body: 200\n"
                                "  max_large_bodies: 2\n  allow_browser_pull: true\n"))
    limits = ClientLimits.of(config)
    assert (limits.header_timeout, limits.keepalive_timeout, limits.body_timeout) == \
        (0.5, 120, 5)
    assert (limits.max_connections, limits.max_body, limits.max_large_bodies) == \
        (64, 200 * MIB, 2)
    assert config.data["daemon"]["allow_browser_pull"] is True


@pytest.mark.parametrize(("line", "key"), [
    ("header_timeout: 0s", "header_timeout"), ("keepalive_timeout: never", "keepalive_timeout"),
    ("body_timeout: 2h", "body_timeout"), ("max_connections: 2", "max_connections"),
    ("max_body: 0", "max_body"), ("max_large_bodies: many", "max_large_bodies"),
    ("allow_browser_pull: maybe", "allow_browser_pull"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_global(_write(tmp_path, f"daemon:\n  {line}\n"))
    assert e.value.key == f"daemon.{key}"
