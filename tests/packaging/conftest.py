"""Fixtures for the packaging tests; the helpers they use live in servicekit.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# servicekit sits beside this file; make it importable whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

from servicekit import MODEL_ID, REPO, ServiceEnv  # noqa: E402

from harness import Home, Ports  # noqa: E402


@pytest.fixture
def llmctld_bin() -> Path:
    """This checkout's launcher, or an installed llmctld named by $LLMCTL_TEST_LLMCTLD."""
    path = Path(os.environ.get("LLMCTL_TEST_LLMCTLD") or REPO / "bin" / "llmctld")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing or not executable")
    return path


@pytest.fixture
def backend() -> str:
    """The fake llama-server, unless a test parametrizes ``backend`` with "real"."""
    return "fake"


@pytest.fixture
def service_env(
    request: pytest.FixtureRequest,
    home: Home,
    ports: Ports,
    tmp_path: Path,
    llmctld_bin: Path,
    backend: str,
) -> Iterator[ServiceEnv]:
    if backend == "real":
        home.use_real_server(request.getfixturevalue("llama_server_binary"))
        home.write_config(llama={"ctx_size": 512})
        home.add_model(MODEL_ID, request.getfixturevalue("tiny_gguf"), directory="tiny")
    else:
        home.use_fake_server()
        home.add_model(MODEL_ID, script={"load_seconds": 0.2}, directory="tiny")
    env = ServiceEnv(home, llmctld_bin, daemon_port=ports.take(), log_dir=tmp_path / "log")
    home.write_config(daemon={"port": env.daemon_port})
    yield env
    # Whatever a failed test left behind must not outlive it.
    for proc in env.llama_servers():
        proc.kill()
