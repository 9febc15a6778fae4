"""`llmctl top` in a real terminal (tmux: start it, capture the pane, send keys), its
periodic lines in a pipe, and `llmctl activity [-f]`, against a real llama-server."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ROOT, Daemon, Home, wait_for

pytestmark = pytest.mark.real_backend

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}


class Tmux:
    """A private tmux server (its own socket), so nothing of the user's is touched."""

    def __init__(self) -> None:
        binary = shutil.which("tmux")
        if binary is None:
            pytest.fail("tmux is not installed; tests/run.sh installs it (Debian: tmux)")
        self.base = [binary, "-L", f"llmctl-test-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]

    def run(self, *args: str) -> str:
        out = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def pane(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def alive(self) -> bool:
        return subprocess.run([*self.base, "has-session", "-t", "top"], capture_output=True,
                              timeout=10).returncode == 0

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    terminal = Tmux()
    yield terminal
    terminal.kill()


def env_args(daemon: Daemon) -> list[str]:
    return [f"{k}={v}" for k, v in daemon.env.items() if k.startswith(("LLMCTL_", "PATH",
                                                                        "HOME"))]


def test_top_in_a_real_terminal_shows_a_request_appear(real_home: Home, make_daemon,
                                                       tmux: Tmux) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    tmux.run("new-session", "-d", "-s", "top", "-x", "150", "-y", "30", "env",
             *env_args(daemon), str(ROOT / "bin" / "llmctl"), "top", "--interval", "0.3")
    screen = wait_for(lambda: "llmctl top" in (p := tmux.pane()) and p, 20, "top's screen")
    assert "tiny-alpha  ready" in screen and "no requests yet" in screen
    assert daemon.post("/v1/chat/completions", json=CHAT).status_code == 200
    screen = wait_for(lambda: "/v1/chat/completions" in (p := tmux.pane()) and p, 20,
                      f"the request on top's screen; last screen:\n{tmux.pane()}")
    row = next(line for line in screen.splitlines() if "/v1/chat/completions" in line)
    assert "loopback" in row and "tiny-alpha" in row and "200" in row
    assert "requests/min 1" in screen
    tmux.run("send-keys", "-t", "top", "q")
    wait_for(lambda: not tmux.alive(), 10, "top to quit on q")


def test_top_into_a_pipe_prints_periodic_lines(real_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    proc = subprocess.Popen([str(ROOT / "bin" / "llmctl"), "top", "--interval", "0.2"],
                            env=daemon.env, stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "tiny-alpha  ready" in first and "\x1b" not in first  # no escapes in a pipe
        assert daemon.post("/v1/chat/completions", json=CHAT).status_code == 200
        for _ in range(100):
            line = proc.stdout.readline()
            if "/v1/chat/completions" in line:
                assert "tiny-alpha" in line and "6" in line
                break
        else:
            pytest.fail("the request never appeared in top's output")
    finally:
        proc.kill()
        proc.wait(10)


def test_activity_lists_and_follows(real_home: Home, make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon()
    assert daemon.cli("activity").stdout.startswith("no requests yet")
    assert daemon.switch("tiny-alpha").status_code == 200
    assert daemon.post("/v1/chat/completions", json=CHAT).status_code == 200
    listed = wait_for(lambda: "/v1/chat/completions" in (out := daemon.cli("activity").stdout)
                      and out, 10, "the request in `llmctl activity`")
    header, row = listed.splitlines()[:2]
    assert header.split()[:3] == ["TIME", "CLIENT", "ROUTE"]
    assert "tiny-alpha" in row and "/6" in row  # prompt/generated tokens
    as_json = daemon.cli("activity", "--json")
    assert '"generated_tokens": 6' in as_json.stdout

    out = tmp_path / "follow.txt"
    with open(out, "w") as sink:
        follower = subprocess.Popen([str(ROOT / "bin" / "llmctl"), "activity", "-f", "-n", "0"],
                                    env=daemon.env, stdout=sink, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "TIME" in out.read_text(), 10, "the follow header")
        assert daemon.post("/v1/chat/completions", json=CHAT).status_code == 200
        wait_for(lambda: "/v1/chat/completions" in out.read_text(), 10,
                 "the followed request")
    finally:
        follower.kill()
        follower.wait(10)
