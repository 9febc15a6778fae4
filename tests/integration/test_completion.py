"""`llmctl completion bash|zsh|fish`, loaded into the real shells and asked to complete.

Model ids come from the running daemon (`llmctl models --ids`); with the daemon down, commands
and options still complete and a TAB does not hang.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import ROOT, Daemon, Home

BIN = ROOT / "bin"
ZSH_DRIVER = ROOT / "tests" / "support" / "zsh_complete.zsh"


def shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: tests/run.sh installs it (apt-get install {name})")
    return path


def env_for(base: dict[str, str]) -> dict[str, str]:
    return {**base, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def complete_bash(env: dict[str, str], line: str) -> list[str]:
    """What bash's programmable completion offers at the end of `line`."""
    words = line.split(" ")
    script = subprocess.run([str(BIN / "llmctl"), "completion", "bash"], env=env,
                            capture_output=True, text=True, check=True, timeout=30).stdout
    driver = (script + "\nCOMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); _llmctl\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    r = subprocess.run([shell("bash"), "--norc", "-c", driver, "bash", *words], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


def complete_fish(env: dict[str, str], line: str) -> list[str]:
    r = subprocess.run([shell("fish"), "--no-config", "-c",
                        "llmctl completion fish | source; complete -C $argv[1]", line],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return [w.split("\t")[0] for w in r.stdout.splitlines() if w]


def complete_zsh(env: dict[str, str], line: str, tmp: Path, *, fpath: bool = False) -> list[str]:
    """Drive an interactive zsh through zpty: TAB after `line`, collect the candidates. The
    script is sourced (the README's `eval` install) or autoloaded from $fpath (packages)."""
    script = tmp / "site-functions" / "_llmctl"
    script.parent.mkdir(exist_ok=True)
    script.write_text(subprocess.run([str(BIN / "llmctl"), "completion", "zsh"], env=env,
                                     capture_output=True, text=True, check=True,
                                     timeout=30).stdout)
    where = script.parent if fpath else script
    r = subprocess.run([shell("zsh"), "-f", str(ZSH_DRIVER), str(where), line],
                       env={**env, "HOME": str(tmp)}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "__DONE__" in r.stdout, r.stdout + r.stderr
    out = r.stdout.replace("\r", "")
    return [w for block in re.findall(r"<<\n(.*?)\n>>", out, re.S) for w in block.split("\n")]


@pytest.fixture
def daemon(fake_home: Home, make_daemon) -> Daemon:
    for model in ("tiny-alpha", "tiny-beta", "qwen-coder"):
        fake_home.add_model(model)
    return make_daemon()


def test_models_ids_prints_one_id_per_line(daemon: Daemon) -> None:
    r = daemon.cli("models", "--ids")
    assert r.returncode == 0 and r.stdout.split() == ["qwen-coder", "tiny-alpha", "tiny-beta"]


def test_bash(daemon: Daemon) -> None:
    env = env_for(daemon.env)
    assert complete_bash(env, "llmctl sw") == ["switch"]
    assert complete_bash(env, "llmctl switch tiny-") == ["tiny-alpha", "tiny-beta"]
    assert complete_bash(env, "llmctl serve q") == ["qwen-coder"]
    assert complete_bash(env, "llmctl logs -n 5 t") == ["tiny-alpha", "tiny-beta"]
    assert complete_bash(env, "llmctl logs -n ") == []  # a line count, not a model
    assert complete_bash(env, "llmctl switch tiny-alpha ") == []  # one model only
    assert sorted(complete_bash(env, "llmctl switch --f")) == ["--fit", "--force"]
    assert complete_bash(env, "llmctl switch --fo") == ["--force"]
    assert sorted(complete_bash(env, "llmctl logs --")) == ["--follow", "--help", "--lines"]
    assert complete_bash(env, "llmctl completion ") == ["bash", "zsh", "fish"]


def test_launch_and_connect_complete_the_agents(daemon: Daemon, tmp_path: Path) -> None:
    env = env_for(daemon.env)
    agents = ["claude", "claude-code", "opencode", "codex", "aider"]
    assert complete_bash(env, "llmctl lau") == ["launch"]
    assert complete_bash(env, "llmctl launch ") == agents
    assert complete_bash(env, "llmctl connect cl") == ["claude", "claude-code"]
    assert sorted(complete_bash(env, "llmctl launch --d")) == ["--dry-run"]
    assert complete_fish(env, "llmctl launch c") == ["claude", "claude-code", "codex"]
    assert sorted(complete_zsh(env, "llmctl launch c", tmp_path)) == [
        "claude", "claude-code", "codex"]


def test_fish(daemon: Daemon) -> None:
    env = env_for(daemon.env)
    assert complete_fish(env, "llmctl sw") == ["switch"]
    assert complete_fish(env, "llmctl switch tiny-") == ["tiny-alpha", "tiny-beta"]
    assert complete_fish(env, "llmctl inspect qw") == ["qwen-coder"]
    assert complete_fish(env, "llmctl switch tiny-alpha ") == []
    assert "--force" in complete_fish(env, "llmctl stop --")


@pytest.mark.parametrize("fpath", [False, True], ids=["sourced", "fpath"])
def test_zsh(daemon: Daemon, tmp_path: Path, fpath: bool) -> None:
    env = env_for(daemon.env)
    assert complete_zsh(env, "llmctl sw", tmp_path, fpath=fpath) == ["switch"]
    assert sorted(complete_zsh(env, "llmctl switch tiny-", tmp_path, fpath=fpath)) == [
        "tiny-alpha", "tiny-beta"]
    assert set(complete_zsh(env, "llmctl logs -", tmp_path, fpath=fpath)) >= {"--follow",
                                                                             "--lines"}


def test_daemon_down_still_completes_commands(home: Home, ports) -> None:
    env = env_for({**home.env, "LLMCTL_PORT": str(ports.take())})
    assert complete_bash(env, "llmctl st") == ["stop", "status"]
    assert complete_bash(env, "llmctl switch t") == []
    assert complete_fish(env, "llmctl switch t") == []
