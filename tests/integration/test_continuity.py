"""KV-cache continuity against a REAL llama-server: a switch back, an idle unload's wake and
a daemon restart find their prompt in the restored cache (llama-server's own
`timings.cache_n` says so); what must not be kept is not, and says why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import Daemon, Home, wait_for

pytestmark = pytest.mark.real_backend

PROMPT = " ".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(24))


def chat(daemon: Daemon, prompt: str = PROMPT, stream: bool = True) -> dict[str, Any]:
    """llama-server's timings of one completion (from the last SSE event when streamed)."""
    body = {"model": "local", "max_tokens": 2, "stream": stream,
            "messages": [{"role": "user", "content": prompt}]}
    r = daemon.post("/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    if not stream:
        return r.json()["timings"]
    events = [json.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: {")]
    return next(e["timings"] for e in reversed(events) if "timings" in e)


def saves(home: Home, model: str | None = None) -> list[Path]:
    root = home.runtime / "kv"
    return sorted((root / model if model else root).rglob("*.bin")) if root.exists() else []


def kv_home(home: Home, binary: Path, tiny: Path, **cache: Any) -> Home:
    home.use_real_server(binary)
    home.write_config(llama={"ctx_size": 2048}, cache={"min_tokens": 64, **cache})
    home.add_model("tiny-alpha", tiny)
    home.add_model("tiny-beta", tiny)
    return home


@pytest.fixture
def kv(home: Home, llama_server_binary: Path, tiny_gguf: Path) -> Home:
    return kv_home(home, llama_server_binary, tiny_gguf)


def reused_share(timings: dict[str, Any]) -> float:
    return timings["cache_n"] / (timings["cache_n"] + timings["prompt_n"])


def test_switch_away_and_back_reuses_the_prompt(kv: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    cold = chat(daemon)
    assert cold["cache_n"] == 0 and cold["prompt_n"] > 500
    r = daemon.switch("tiny-beta")
    assert r.status_code == 200, r.text
    assert r.json()["kv_events"][0]["kind"] == "save"
    [saved] = saves(kv, "tiny-alpha")
    assert saved.stat().st_mode & 0o777 == 0o600
    assert (kv.runtime / "kv" / "tiny-alpha").stat().st_mode & 0o777 == 0o700
    assert (kv.runtime / "kv").stat().st_mode & 0o777 == 0o700

    events = daemon.switch_events("tiny-alpha")
    assert {"phase": "restoring"}.items() <= next(
        e for e in events if e.get("phase") == "restoring").items()
    backend = daemon.backend()
    assert backend["kv"]["restored_tokens"] >= cold["prompt_n"]
    after = chat(daemon)
    assert reused_share(after) >= 0.9, after
    # verified, not assumed: the proxy tells the lifecycle worker what the request reused
    record = wait_for(lambda: (b := daemon.backend())["kv"].get("reused_tokens") is not None
                      and b, 20, "the reuse in the backend record", daemon.log)
    assert record["kv"]["reused_tokens"] == after["cache_n"]
    activity = daemon.get("/activity").json()["entries"]
    assert activity[-1]["kv_reused_tokens"] == after["cache_n"]
    metrics = daemon.get("/metrics").text
    assert 'llmctl_kv_reused_tokens_total{model="tiny-alpha"}' in metrics
    assert 'llmctl_kv_restored_tokens_total{model="tiny-alpha"}' in metrics
    assert 'llmctl_kv_save_seconds_count{model="tiny-alpha"}' in metrics
    status = daemon.cli("status")
    assert f"restored {backend['kv']['restored_tokens']:,} tokens" in status.stdout, status


def test_a_save_cut_at_its_timeout_leaves_no_file_and_the_stop_goes_on(
        fake_home: Home, make_daemon) -> None:
    """Fault injection a real llama-server cannot be made to produce on demand: a save that
    hangs half-written (the scripted fake writes half its file, then waits)."""
    fake_home.write_config(cache={"save_timeout": "300ms", "min_tokens": 10})
    fake_home.add_model("hangs", script={"load_seconds": 0.1, "slot_tokens": 500,
                                         "slot_save_seconds": 60})
    fake_home.add_model("other", script={"load_seconds": 0.1})
    daemon = make_daemon()
    assert daemon.switch("hangs").status_code == 200
    r = daemon.switch("other", timeout=20)
    assert r.status_code == 200, r.text
    assert saves(fake_home) == []
    assert list((fake_home.runtime / "kv" / "hangs").iterdir()) == []  # nor a temporary one
    log = daemon.log.read_text()
    assert "saving the KV cache of hangs failed (" in log
    assert "it is not kept, the stop goes on" in log
    assert daemon.switch("hangs").status_code == 200  # next load starts clean
    assert "restored_tokens" not in daemon.backend()["kv"]


def test_a_forced_switch_does_not_wait_for_a_save(fake_home: Home, make_daemon) -> None:
    fake_home.write_config(cache={"save_timeout": "60s", "min_tokens": 10})
    fake_home.add_model("hangs", script={"load_seconds": 0.1, "slot_tokens": 500,
                                         "slot_save_seconds": 60})
    fake_home.add_model("other", script={"load_seconds": 0.1})
    daemon = make_daemon()
    assert daemon.switch("hangs").status_code == 200
    r = daemon.switch("other", force=1, timeout=20)
    assert r.status_code == 200, r.text
    assert daemon.backend()["model"] == "other"
    assert list((fake_home.runtime / "kv" / "hangs").iterdir()) == []
