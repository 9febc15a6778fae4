"""The real Pi coding agent with models that came in without YAML: a print-mode answer in words
from the starter model (the default when none is configured), and `/llm pull <repo>` through
the daemon against the local fake hub (tests/support/fake_hub.py)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_pi_extension import PI_LEAN_ARGS, PiEnv, make_pi_env, notices, ui
from test_pi_extension import pi_bin as pi_bin  # noqa: F401  (a fixture this module uses)

from fake_hub import FakeHub
from ggufkit import write_header
from harness import Daemon, Home, Ports, owned_backends

WORDS = re.compile(r"[A-Za-z]{2,}")


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    fake = FakeHub().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, ports: Ports, llama_server_binary: Path,
           hub: FakeHub, tiny_gguf: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("pi-models-in")
    home = Home(root / "home", ports.take())
    home.use_real_server(llama_server_binary)
    home.write_config(daemon={"starter": True})
    hub.add("someone/Tiny-GGUF", {"Tiny-F32.gguf": tiny_gguf.read_bytes()})
    daemon = Daemon(home, root / "llmctld.log")
    with pytest.MonkeyPatch.context() as env:  # the daemon (and its pulls) talk to the fake hub
        env.setenv("HF_ENDPOINT", hub.url)
        env.setenv("HF_HOME", str(root / "hf-home"))
        env.delenv("HF_TOKEN", raising=False)
        daemon.start()
    # a base model rarely stops on its own, and this machine may be busy: short answers
    config = home.models_dir / "gemma3-270m" / "config.yaml"
    config.write_text(config.read_text().replace("maxTokens: 256", "maxTokens: 12"))
    try:
        yield daemon
    finally:
        try:
            daemon.stop()
        finally:
            for proc in owned_backends(home.runtime):
                with contextlib.suppress(psutil.Error):
                    proc.kill()


@pytest.fixture
def pi(pi_bin: Path, daemon: Daemon, tmp_path: Path) -> PiEnv:
    return make_pi_env(pi_bin, tmp_path, {k: v for k, v in daemon.env.items()
                                          if k.startswith("LLMCTL_")})


def test_print_mode_answers_in_words_with_the_starter(daemon: Daemon, pi: PiEnv) -> None:
    assert daemon.post("/reload").status_code == 200  # the edit above
    assert daemon.get("/status").json()["default_model"] == "gemma3-270m"
    assert daemon.get("/active").json()["pi"]["model"]["maxTokens"] == 12
    res = pi.run("--model", "llmctl/local", *PI_LEAN_ARGS, "--mode", "json", "-p",
                 "Write one sentence about the sea.", timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    ends = [e["message"] for e in events
            if e.get("type") == "message_end" and e.get("message", {}).get("role") == "assistant"]
    assert ends, res.stdout[-2000:]
    text = "".join(part.get("text", "") for part in ends[-1]["content"]
                   if part.get("type") == "text")
    assert len(WORDS.findall(text)) >= 2, ends[-1]
    assert daemon.backend()["model"] == "gemma3-270m"  # loaded as the default model


def test_llm_pull_registers_a_model(daemon: Daemon, pi: PiEnv) -> None:
    with pi.rpc() as rpc:
        msgs = rpc.command("/llm pull someone/Tiny-GGUF", timeout=180)
        assert any("Pulled someone/Tiny-GGUF as tiny-f32. Switch to it with /llm switch "
                   "tiny-f32." in n for n in notices(msgs, "info")), msgs
        msgs = rpc.command("/llm pull someone/Tiny-GGUF:Q2_K", timeout=60)
        assert any("has no Q2_K quantisation" in n for n in notices(msgs, "error")), msgs
    models = {m["id"] for m in daemon.get("/models").json()["models"]}
    assert "tiny-f32" in models


def test_dashboard_pull_shows_its_progress(daemon: Daemon, pi: PiEnv, hub: FakeHub,
                                           tmp_path: Path) -> None:
    """"Pull a model…" in /llm asks for the repository, then shows the download's progress
    (a widget with a bar, and the footer) until it is registered."""
    # huggingface_hub reports progress per 10 MB read: 30 MB, slowly, give a few events
    data = write_header(tmp_path / "slow.gguf", name="Slow", pad=30_000_000).read_bytes()
    hub.add("someone/Slow-GGUF", {"Slow-F32.gguf": data})
    hub.trickle["Slow-F32.gguf"] = 0.01  # 64 KiB every 10 ms: ~5 s
    asked: list[dict] = []

    def answer(req: dict) -> dict | None:
        if req["method"] == "select":
            return {"value": "Pull a model…"}
        asked.append(req)
        return {"value": "someone/Slow-GGUF"}

    with pi.rpc() as rpc:
        msgs = rpc.command("/llm", on_dialog=answer, timeout=180)
    assert [r["method"] for r in asked] == ["input"], asked
    assert any("Pulled someone/Slow-GGUF as slow-f32" in n for n in notices(msgs, "info")), msgs
    bars = [" ".join(m["widgetLines"]) for m in ui(msgs, "setWidget") if m.get("widgetLines")]
    assert any("llmctl: pulling someone/Slow-GGUF" in b and "Slow-F32.gguf [" in b
               for b in bars), bars
    percents = {int(p) for b in bars for p in re.findall(r"\] (\d+)%", b)}
    assert len(percents) >= 2 and min(percents) < 100, bars
    assert not ui(msgs, "setWidget")[-1].get("widgetLines")  # cleared at the end
