"""The real coding agents, started by `llmctl launch`, answer one prompt through llmctld.

Claude Code (`claude -p`) and opencode (`opencode run`) come from npm (devDependencies in
package.json: `npm ci` installs them, each as a per-platform binary package, with no download
at install or run time). They run against a REAL llama-server serving a tiny generated GGUF
with llmctl's Gemma-format Jinja template (the starter's, with tools) and a 32k context, so
`launch`'s checks pass. Each must exit 0 with an answer, and llmctld's activity log must show
its requests. HOME is a temporary directory; the agents' telemetry, update checks and error
reports are off (launch sets that), and every proxy variable points at a closed loopback port
(NO_PROXY exempts loopback): an agent that needed the network would fail here.

The agents' own system prompts and tool lists are trimmed (`--system-prompt`, `--tools`, an
opencode.json in the project): the tiny model's tokenizer is bytes, so Claude Code's full
prompt (~60 kB) would be ~60k tokens of prompt processing on a shared CPU. One tool is kept,
so the request carries `tools` through the template. A base tiny model answers gibberish;
what is checked is that the agent gets a well-formed answer and exits 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llmctl.daemon.backend.starter import TEMPLATE_SOURCE

from harness import ROOT, Daemon, Home
from tinymodel import write_tiny_llama

pytestmark = pytest.mark.real_backend

NODE_BIN = ROOT / "node_modules" / ".bin"
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens, connections are refused


def agent_binary(name: str) -> Path:
    path = NODE_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `npm ci` (package.json's devDependencies "
                    "install Claude Code and opencode)")
    return path


@pytest.fixture
def agent_daemon(real_home: Home, make_daemon, tmp_path: Path) -> Daemon:
    gguf = write_tiny_llama(tmp_path / "agent.gguf", name="agent", ctx=32768)
    template = tmp_path / "chat-template.jinja"
    shutil.copy(TEMPLATE_SOURCE, template)
    real_home.add_model(
        "tiny-agent", gguf,
        # random weights never stop by themselves, and an answer cut at max_tokens is an
        # error to Claude Code: a bias on EOS (token 2) ends each answer within ~15 tokens
        llama={"ctx_size": 32768, "extra_args": ["--jinja", "--chat-template-file",
                                                  str(template), "--logit-bias", "2+2"]})
    real_home.write_config(daemon={"default_model": "tiny-agent"})
    return make_daemon()


def run_launch(daemon: Daemon, tmp_path: Path, *args: str, timeout: float = 300,
               ) -> subprocess.CompletedProcess[str]:
    user_home, project = tmp_path / "user", tmp_path / "project"
    user_home.mkdir(exist_ok=True)
    project.mkdir(exist_ok=True)
    env = {k: v for k, v in daemon.home.env.items()
           if not k.startswith(("ANTHROPIC_", "OPENAI_", "OPENCODE", "CLAUDE_"))}
    env.update(HOME=str(user_home), XDG_CONFIG_HOME=str(user_home / ".config"),
               XDG_DATA_HOME=str(user_home / ".local" / "share"),
               XDG_CACHE_HOME=str(user_home / ".cache"),
               XDG_STATE_HOME=str(user_home / ".local" / "state"),
               PATH=f"{NODE_BIN}{os.pathsep}{os.environ['PATH']}", NO_COLOR="1",
               # any request that is not to loopback fails at once: the agents must not
               # need the network (no login, update check or telemetry on the way)
               HTTPS_PROXY=DEAD_PROXY, HTTP_PROXY=DEAD_PROXY, https_proxy=DEAD_PROXY,
               http_proxy=DEAD_PROXY, NO_PROXY="127.0.0.1,localhost,::1",
               no_proxy="127.0.0.1,localhost,::1")
    return subprocess.run([str(ROOT / "bin" / "llmctl"), "launch", *args], env=env,
                          cwd=project, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def requests_seen(daemon: Daemon) -> list[dict]:
    return daemon.get("/activity").json()["entries"]


def test_claude_code_answers_through_llmctld(agent_daemon: Daemon, tmp_path: Path) -> None:
    agent_binary("claude")
    r = run_launch(agent_daemon, tmp_path, "claude", "--", "-p", "Say hello.",
                   "--system-prompt", "You reply briefly.", "--tools", "Read",
                   "--strict-mcp-config", "--no-session-persistence",
                   "--output-format", "json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    answer = json.loads(r.stdout.strip().splitlines()[-1])
    assert answer["type"] == "result" and answer["is_error"] is False, answer
    assert isinstance(answer["result"], str), answer
    seen = [e for e in requests_seen(agent_daemon) if e["route"] == "/v1/messages"]
    assert seen and all(e["status"] == 200 for e in seen), seen
    assert {e["model"] for e in seen} == {"tiny-agent"}
    assert not list((tmp_path / "user").glob(".claude/settings.json"))  # nothing --write'd


def test_opencode_answers_through_llmctld(agent_daemon: Daemon, tmp_path: Path) -> None:
    agent_binary("opencode")
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    # the project's own opencode.json, merged over launch's private one: a short prompt and
    # one tool (see the module's docstring)
    (project / "opencode.json").write_text(json.dumps({
        "$schema": "https://opencode.ai/config.json",
        "agent": {"build": {"prompt": "You reply briefly."}},
        "tools": {"*": False, "read": True}}))
    # --format json: the answer as opencode's own events. Its text is a few random bytes, often
    # whitespace or not UTF-8, which the default format prints as nothing at all
    r = run_launch(agent_daemon, tmp_path, "opencode", "--", "run", "--format", "json",
                   "Say hello.")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert not [e for e in events if e["type"] == "error"], events
    finished = [e["part"] for e in events if e["type"] == "step_finish"]
    assert finished and finished[-1]["reason"] == "stop", events
    assert finished[-1]["tokens"]["input"] > 0 and finished[-1]["tokens"]["output"] > 0, events
    seen = [e for e in requests_seen(agent_daemon) if e["route"] == "/v1/chat/completions"]
    assert seen and all(e["status"] == 200 for e in seen), seen
    assert {e["model"] for e in seen} == {"tiny-agent"}
    assert not (tmp_path / "user" / ".config" / "opencode" / "opencode.json").exists()
