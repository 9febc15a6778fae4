"""preflight.check: the config is read in a child, and what it settles (or refuses) comes
back to the caller as if it had been read here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from llmctl.core.paths import Paths
from llmctl.daemon.processes import preflight


def paths(tmp_path: Path) -> Paths:
    return Paths(home=tmp_path, runtime=tmp_path / "run")


def write_config(tmp_path: Path, text: str) -> None:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "default.yaml").write_text(text)


def test_settles_host_port_and_hands_back_the_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LLMCTL_HOST", raising=False)
    monkeypatch.delenv("LLMCTL_PORT", raising=False)
    write_config(tmp_path, "daemon:\n  port: 17000\n  allowed_origins: ['http://a.test']\n")
    startup = preflight.check(paths(tmp_path), None, None)
    assert (startup.host, startup.port, startup.remote) == ("127.0.0.1", 17000, False)
    assert startup.config_exists
    assert startup.config["daemon"]["allowed_origins"] == ["http://a.test"]
    assert startup.config["llama"]["parallel"] == 1  # defaults merged in
    assert preflight.check(paths(tmp_path), "::1", 0)[:2] == ("::1", 0)  # arguments win


def test_without_a_config_file_the_defaults_apply(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMCTL_PORT", "17001")
    startup = preflight.check(paths(tmp_path), None, None)
    assert startup.port == 17001 and not startup.config_exists


@pytest.mark.parametrize("text, env, expected", [
    ("daemon:\n  prot: 1\n", {}, "default.yaml:2: daemon.prot: unknown key"),
    ("", {"LLMCTL_PORT": "http"}, "LLMCTL_PORT must be a port number"),
    ("", {"LLMCTL_HOST": "0.0.0.0"}, "daemon.allow_remote: true"),
])
def test_refusals_come_back_with_their_message(tmp_path: Path, monkeypatch, text: str,
                                               env: dict[str, str], expected: str) -> None:
    for name in ("LLMCTL_HOST", "LLMCTL_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    write_config(tmp_path, text)
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check(paths(tmp_path), None, None)
    assert expected in str(err.value)


def test_the_caller_never_imports_the_config_stack(tmp_path: Path) -> None:
    import subprocess

    code = ("import sys\nfrom pathlib import Path\nfrom llmctl.core.paths import Paths\n"
            "from llmctl.daemon.processes import preflight\n"
            f"s = preflight.check(Paths(Path({str(tmp_path)!r}), Path({str(tmp_path)!r})),"
            " None, 0)\n"
            "assert s.port == 0\n"
            "print(sorted(m for m in ('yaml', 'llmctl.core.config') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_prepare_runs_in_the_same_child_and_a_failure_is_a_warning(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """llmctld asks for both at once (one child, one config-stack import on a cold start's
    critical path); the starter step never stops the daemon."""
    from llmctl.daemon.backend import starter

    monkeypatch.delenv("LLMCTL_PORT", raising=False)
    calls = tmp_path / "calls"

    def ensure(paths: Paths, cfg: object) -> None:
        calls.write_text(str(os.getpid()))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(starter, "ensure", ensure)  # the forked child inherits it
    startup = preflight.check(paths(tmp_path), None, 17002, prepare=True)
    assert startup.port == 17002
    assert startup.warning == "could not prepare the starter model: RuntimeError: disk on fire"
    assert calls.read_text() != str(os.getpid())  # it ran in the child
    assert preflight.check(paths(tmp_path), None, 17002).warning is None  # not asked for


def test_meanwhile_runs_here_while_the_child_works(tmp_path: Path, monkeypatch) -> None:
    """llmctld imports the supervisor's modules meanwhile; a failure there ends the child."""
    monkeypatch.delenv("LLMCTL_PORT", raising=False)
    ran: list[int] = []
    startup = preflight.check(paths(tmp_path), None, 17003,
                              meanwhile=lambda: ran.append(os.getpid()))
    assert startup.port == 17003 and ran == [os.getpid()]

    def broken() -> None:
        raise ImportError("no such module")

    with pytest.raises(ImportError):
        preflight.check(paths(tmp_path), None, 17003, meanwhile=broken)
