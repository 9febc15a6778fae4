"""`llmctl launch <agent>`: what it would run for each agent (`--dry-run`), the checks that
refuse up front (no model, no tool calls, too small a context) with the fix named and the
CLI's exit codes, and a real exec of a stand-in agent that shows the run's environment and
private config (nothing written to the user's files). The daemon is real; the models are
fake-server ones (launch only reads /active and /models/<id>, nothing is loaded)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from harness import Daemon, Home

EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 4, 8


@pytest.fixture
def agents_home(fake_home: Home) -> Home:
    fake_home.add_model("big", llama={"ctx_size": 32768})
    fake_home.add_model("small", llama={"ctx_size": 4096})
    fake_home.add_model("plain", llama={"ctx_size": 32768,
                                        "extra_args": ["--no-jinja", "--chat-template", "gemma"]})
    fake_home.add_model("two-slots", llama={"ctx_size": 16384, "parallel": 2})
    fake_home.write_config(daemon={"default_model": "big"})
    return fake_home


def launch(daemon: Daemon, *args: str, path: str | None = None, home: Path | None = None):
    env = dict(daemon.home.env)
    if path is not None:
        env["PATH"] = path
    if home is not None:
        env["HOME"] = str(home)
    return daemon.cli("launch", *args, env=env)


@pytest.mark.parametrize("agent, program, expect_env, expect_args", [
    ("claude", "claude", {"ANTHROPIC_AUTH_TOKEN": "llmctl", "DISABLE_TELEMETRY": "1",
                          "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}, []),
    ("claude-code", "claude", {"ANTHROPIC_AUTH_TOKEN": "llmctl"}, []),
    ("opencode", "opencode", {"OPENCODE_DISABLE_AUTOUPDATE": "1"}, []),
    ("codex", "codex", {"LLMCTL_CODEX_KEY": "llmctl"}, ["-c", "model_provider=llmctl"]),
    ("aider", "aider", {"OPENAI_API_KEY": "llmctl"}, ["--model", "openai/local"]),
])
def test_dry_run_prints_what_each_agent_gets(agents_home: Home, make_daemon, agent: str,
                                            program: str, expect_env: dict[str, str],
                                            expect_args: list[str]) -> None:
    daemon = make_daemon()
    r = launch(daemon, "--dry-run", "--json", agent, "--", "-p", "say hi")
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads(r.stdout)
    assert plan["model"] == "big" and plan["context"] == 32768
    assert plan["argv"][0] == program and plan["argv"][-2:] == ["-p", "say hi"]
    pairs = list(zip(plan["argv"], plan["argv"][1:], strict=False))
    for flag, value in zip(expect_args[::2], expect_args[1::2], strict=True):
        assert (flag, value) in pairs, plan["argv"]
    for name, value in expect_env.items():
        assert plan["env"][name] == value, plan["env"]
    url = daemon.url
    if agent.startswith("claude"):
        assert plan["env"]["ANTHROPIC_BASE_URL"] == url
        assert plan["unset"] == ["ANTHROPIC_API_KEY"]
    elif agent == "opencode":
        (text,) = plan["files"].values()
        config = json.loads(text)
        assert plan["env"]["OPENCODE_CONFIG"] in plan["files"]
        provider = config["provider"]["llmctl"]
        assert provider["options"]["baseURL"] == url + "/v1"
        assert provider["models"]["local"]["limit"]["context"] == 32768
        assert config["model"] == "llmctl/local"
    elif agent == "codex":
        assert f'base_url="{url}/v1"' in " ".join(plan["argv"])
    else:
        assert plan["env"]["OPENAI_API_BASE"] == url + "/v1"
    text = launch(daemon, "--dry-run", agent)
    assert text.returncode == 0 and "# command:" in text.stdout
    assert "big (32768-token context per request" in text.stdout


def test_refuses_a_context_too_small_before_starting(agents_home: Home, make_daemon,
                                                     tmp_path: Path) -> None:
    daemon = make_daemon()
    assert daemon.switch("small").status_code == 200
    for agent in ("claude", "opencode", "codex"):
        r = launch(daemon, agent)
        assert r.returncode == EXIT_UNAVAILABLE, r.stdout + r.stderr
        assert "model small has a 4096-token context, too small" in r.stderr
        assert "at least 16384" in r.stderr and "llama.ctx_size" in r.stderr
        assert "small/config.yaml" in r.stderr and "llmctl pull" in r.stderr
    r = launch(daemon, "--json", "claude")
    assert json.loads(r.stdout)["error"]["code"] == "context_too_small"
    # aider's prompts are smaller: 4096 is not enough for it either, 8192 would be
    assert launch(daemon, "aider").returncode == EXIT_UNAVAILABLE
    # the context per request is what counts: 16384 over two slots is 8192 each
    assert daemon.switch("two-slots").status_code == 200
    r = launch(daemon, "--dry-run", "claude")
    assert r.returncode == EXIT_UNAVAILABLE and "8192-token context" in r.stderr
    assert launch(daemon, "--dry-run", "aider").returncode == 0


def test_refuses_a_model_without_tool_calls(agents_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("plain").status_code == 200
    r = launch(daemon, "--dry-run", "opencode")
    assert r.returncode == EXIT_UNAVAILABLE, r.stdout + r.stderr
    assert "model plain cannot serve opencode, which sends tools" in r.stderr
    assert "--chat-template-file" in r.stderr
    # aider edits as text: it sends no tools
    assert launch(daemon, "--dry-run", "aider").returncode == 0
    models = json.loads(daemon.cli("models", "--json").stdout)["models"]
    marked = {m["id"]: m["tool_calls"] for m in models}
    assert marked == {"big": True, "plain": False, "small": True, "two-slots": True}
    listing = daemon.cli("models").stdout
    assert "plain: no tool calls" in listing
    shown = daemon.cli("inspect", "plain").stdout
    assert "tools    no tool calls: its config runs llama-server with --no-jinja" in shown


def test_refuses_when_there_is_no_model(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("big", llama={"ctx_size": 32768})
    daemon = make_daemon()
    r = launch(daemon, "claude")
    assert r.returncode == EXIT_NOT_FOUND, r.stdout + r.stderr
    assert "no model is active and no default model is set" in r.stderr
    assert "llmctl switch" in r.stderr and "llmctl pull" in r.stderr


def test_an_agent_that_is_not_installed_is_named(agents_home: Home, make_daemon,
                                                 tmp_path: Path) -> None:
    daemon = make_daemon()
    r = launch(daemon, "opencode", path=str(tmp_path / "empty"))
    assert r.returncode == EXIT_UNAVAILABLE
    assert "opencode is not installed" in r.stderr and "npm install -g opencode-ai" in r.stderr


def test_launch_execs_the_agent_with_its_private_setup(agents_home: Home, make_daemon,
                                                       tmp_path: Path) -> None:
    """A stand-in `opencode` on PATH records what it was started with: the arguments after
    --, the environment, and the private config (which exists while it runs); the user's
    HOME gets nothing."""
    bin_dir, user_home = tmp_path / "bin", tmp_path / "user"
    bin_dir.mkdir()
    user_home.mkdir()
    record = tmp_path / "record.json"
    fake = bin_dir / "opencode"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        "config = os.environ['OPENCODE_CONFIG']\n"
        f"json.dump({{'argv': sys.argv[1:], 'config': open(config).read(), "
        f"'mode': os.stat(config).st_mode, 'pid': os.getpid(), "
        f"'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    daemon = make_daemon()
    r = launch(daemon, "opencode", "--", "run", "hello there",
               path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", home=user_home)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["run", "hello there"]
    config = json.loads(seen["config"])
    assert config["provider"]["llmctl"]["options"]["baseURL"] == daemon.url + "/v1"
    assert stat.S_IMODE(seen["mode"]) == 0o600
    assert seen["env"]["OPENCODE_DISABLE_AUTOUPDATE"] == "1"
    assert list(user_home.iterdir()) == []  # nothing written to the user's files
    assert "starting opencode on big (32768-token context)" in r.stderr


def test_launch_claude_leaves_no_private_directory_and_drops_a_users_key(
        agents_home: Home, make_daemon, tmp_path: Path) -> None:
    bin_dir, tmp = tmp_path / "bin", tmp_path / "tmp"
    bin_dir.mkdir()
    tmp.mkdir()
    record = tmp_path / "record.json"
    fake = bin_dir / "claude"
    fake.write_text("#!/usr/bin/env python3\nimport json, os, sys\n"
                    f"json.dump(dict(os.environ), open({str(record)!r}, 'w'))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    daemon = make_daemon()
    env = {**daemon.home.env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "TMPDIR": str(tmp), "ANTHROPIC_API_KEY": "sk-the-users-own"}
    r = daemon.cli("launch", "claude", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = json.loads(record.read_text())
    assert "ANTHROPIC_API_KEY" not in seen
    assert seen["ANTHROPIC_BASE_URL"] == daemon.url and seen["ANTHROPIC_AUTH_TOKEN"] == "llmctl"
    assert list(tmp.iterdir()) == []
