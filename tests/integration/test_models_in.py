"""Models in without writing YAML, end to end with a REAL llama-server: bare GGUFs, shards, a
real projector (loaded, shown an image), a Hugging Face cache in daemon.model_dirs,
collisions, `llmctl add`, and `llmctl pull` / `POST /pull` (resumed across runs, too) against a
local fake hub driven through the real huggingface_hub."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from fake_hub import FakeHub
from ggufkit import split_model, write_header
from harness import ROOT, Daemon, Home, wait_for
from tinymodel import write_tiny_llama
from tinyprojector import tiny_png, write_tiny_projector

pytestmark = pytest.mark.real_backend


def chat(daemon: Daemon) -> dict:
    r = daemon.post("/v1/chat/completions", json={
        "model": "local", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return r.json()


def models(daemon: Daemon) -> dict[str, dict]:
    return {m["id"]: m for m in daemon.get("/models").json()["models"]}


def started_argv(daemon: Daemon, model: str) -> list[str]:
    """The llama-server command line llmctl logged when it started `model`."""
    log = daemon.home.runtime / "logs" / f"{model}.log"
    line = next(ln for ln in log.read_text().splitlines()
                if ln.startswith("--- llmctl") and f"starting {model}:" in ln)
    return line.split(f"starting {model}: ", 1)[1].split(" ")


@pytest.fixture
def real(home: Home, llama_server_binary: Path) -> Home:
    home.use_real_server(llama_server_binary)
    home.write_config(llama={"ctx_size": 512})
    return home


def test_a_bare_gguf_is_switched_to_and_chatted_with(real: Home, tiny_gguf: Path,
                                                     make_daemon) -> None:
    (real.models_dir / "Tiny-Chat-F32.gguf").symlink_to(tiny_gguf)
    daemon = make_daemon()

    entry = models(daemon)["tiny-chat-f32"]
    assert entry["source"] == "file" and entry["available"] and entry["config_file"] is None
    assert entry["name"] == "tiny F32"  # general.name and the quantisation
    assert entry["pi"]["contextWindow"] == 512  # trained 2048, clamped to llama.ctx_size

    listing = daemon.cli("models")
    assert listing.returncode == 0, listing.stderr
    row = next(ln for ln in listing.stdout.splitlines() if "tiny-chat-f32" in ln)
    assert row.split()[-1] == "file"

    events = daemon.switch_events("tiny-chat")
    assert events[-1]["event"] == "ready", events
    assert chat(daemon)["model"] == "tiny-chat-f32"
    assert daemon.get("/active").json()["pi"]["model"]["contextWindow"] == 512


def test_a_split_model_loads_through_its_first_shard(real: Home, tiny_gguf: Path,
                                                     make_daemon, tmp_path: Path) -> None:
    shards = split_model(tiny_gguf, real.models_dir / "split", 3, "Tiny-Split-F32")
    daemon = make_daemon()

    (entry,) = daemon.get("/models").json()["models"]
    assert entry["id"] == "tiny-split-f32" and entry["shards"] == 3, entry
    assert entry["size_bytes"] == sum(p.stat().st_size for p in shards)

    r = daemon.switch("tiny-split-f32")
    assert r.status_code == 200, r.text
    assert chat(daemon)["model"] == "tiny-split-f32"
    argv = started_argv(daemon, "tiny-split-f32")
    assert argv[argv.index("-m") + 1] == str(shards[0])

    shards[1].unlink()  # a shard goes missing: unavailable, with the reason
    entry = models(daemon)["tiny-split-f32"]
    assert not entry["available"]
    assert f"missing shard(s) {shards[1].name}" in entry["error"]


def test_a_projector_beside_a_model_is_loaded_and_sees_images(real: Home, tiny_gguf: Path,
                                                             make_daemon) -> None:
    d = real.models_dir / "vision"
    d.mkdir()
    (d / "Tiny-Vision-F32.gguf").symlink_to(tiny_gguf)
    projector = write_tiny_projector(d / "mmproj-tiny-f32.gguf", text_n_embd=64)
    daemon = make_daemon()

    (entry,) = daemon.get("/models").json()["models"]  # the projector is no model of its own
    assert entry["mmproj"] == str(projector)
    assert entry["pi"]["input"] == ["text", "image"]
    assert "+mmproj" in daemon.cli("models").stdout

    events = daemon.switch_events("tiny-vision-f32")
    assert events[-1]["event"] == "ready", events
    argv = started_argv(daemon, "tiny-vision-f32")
    assert argv[argv.index("--mmproj") + 1] == str(projector)
    log = (daemon.home.runtime / "logs" / "tiny-vision-f32.log").read_text()
    assert f"loaded multimodal model, '{projector}'" in log
    props = daemon.get("/backend/props")
    assert props.status_code == 200 and props.json()["modalities"]["vision"] is True

    def ask(with_image: bool) -> dict:
        content: list[dict] = [{"type": "text", "text": "what is this?"}]
        if with_image:
            image = base64.b64encode(tiny_png()).decode()
            content.append({"type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{image}"}})
        r = daemon.post("/v1/chat/completions", json={
            "model": "local", "max_tokens": 4, "messages": [{"role": "user", "content": content}]})
        assert r.status_code == 200, r.text
        return r.json()

    seen = ask(with_image=True)
    assert seen["model"] == "tiny-vision-f32" and seen["choices"][0]["message"]["content"]
    # the image became prompt tokens: the projector's output went into the text model
    assert seen["usage"]["prompt_tokens"] > ask(with_image=False)["usage"]["prompt_tokens"]


def test_a_draft_model_for_speculative_decoding(real: Home, tiny_gguf: Path,
                                                make_daemon) -> None:
    d = real.models_dir / "spec"
    d.mkdir()
    (d / "main.gguf").symlink_to(tiny_gguf)
    (d / "draft.gguf").symlink_to(tiny_gguf)  # same vocabulary: a valid (if pointless) draft
    (d / "config.yaml").write_text("id: spec\nmodel_file: main.gguf\n"
                                   "draft_model_file: draft.gguf\n")
    daemon = make_daemon()

    assert list(models(daemon)) == ["spec"]  # the draft is no model of its own here
    r = daemon.switch("spec")
    assert r.status_code == 200, r.text
    argv = started_argv(daemon, "spec")
    assert argv[argv.index("--model-draft") + 1] == str(d / "draft.gguf")
    assert chat(daemon)["model"] == "spec"


def test_a_hugging_face_cache_in_model_dirs(real: Home, tiny_gguf: Path, make_daemon,
                                            tmp_path: Path) -> None:
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--someone--Tiny-GGUF"
    (repo / "blobs").mkdir(parents=True)
    blob = repo / "blobs" / hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    shutil.copyfile(tiny_gguf, blob)
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model-q8.gguf").symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    real.write_config(daemon={"model_dirs": [str(hub)]})
    before = sorted(p.name for p in hub.rglob("*"))
    daemon = make_daemon()

    entry = models(daemon)["tiny-model-q8"]  # the repo's name, then the file's
    assert entry["source"] == "model_dir" and entry["root"] == str(hub)
    listing = daemon.cli("models").stdout
    assert str(hub).replace(str(Path.home()), "~") in listing
    r = daemon.switch("tiny-model-q8")
    assert r.status_code == 200, r.text
    assert chat(daemon)["model"] == "tiny-model-q8"
    assert sorted(p.name for p in hub.rglob("*")) == before  # read-only: nothing written


def test_collisions_are_reported(real: Home, tiny_gguf: Path, make_daemon,
                                 tmp_path: Path) -> None:
    for sub in ("a", "b"):  # two files of one name (copies: one file linked twice is one model)
        (real.models_dir / sub).mkdir()
        shutil.copyfile(tiny_gguf, real.models_dir / sub / "Same-F32.gguf")
    (real.models_dir / "broken.gguf").write_text("this is not a GGUF file at all, sorry")
    daemon = make_daemon()

    out = daemon.cli("models").stdout
    first, second = real.models_dir / "a" / "Same-F32.gguf", real.models_dir / "b" / "Same-F32.gguf"
    assert (f"~ same-f32-2: id same-f32 is taken by {first} (file), so this file got "
            "same-f32-2") in out
    assert f"! broken: {real.models_dir / 'broken.gguf'}: not a GGUF file (bad magic)" in out
    by_id = models(daemon)
    assert by_id["same-f32"]["file"] == str(first) and by_id["same-f32-2"]["file"] == str(second)
    r = daemon.switch("same-f32-2")
    assert r.status_code == 200, r.text
    r = daemon.switch("broken")
    assert r.status_code == 422 and "bad magic" in r.json()["error"]["message"]


def test_add_links_and_registers(real: Home, tiny_gguf: Path, make_daemon,
                                 tmp_path: Path) -> None:
    elsewhere = tmp_path / "downloads" / "Tiny-Added-F32.gguf"
    elsewhere.parent.mkdir()
    shutil.copyfile(tiny_gguf, elsewhere)
    daemon = make_daemon()

    r = daemon.cli("add", str(elsewhere))
    assert r.returncode == 0, r.stderr
    target = real.models_dir / "tiny-added-f32"
    assert r.stdout.splitlines() == [
        "added tiny-added-f32 (tiny F32)",
        f"  wrote  {target / 'config.yaml'}",
        f"  linked {target / 'Tiny-Added-F32.gguf'} -> {elsewhere}",
        "next: llmctl switch tiny-added-f32"]
    config = yaml.safe_load((target / "config.yaml").read_text())
    assert config["id"] == "tiny-added-f32" and config["model_file"] == "Tiny-Added-F32.gguf"
    assert config["pi"]["model"]["contextWindow"] == 512
    assert (target / "Tiny-Added-F32.gguf").resolve() == elsewhere
    assert models(daemon)["tiny-added-f32"]["source"] == "config"
    assert daemon.switch("tiny-added-f32").status_code == 200
    assert chat(daemon)["model"] == "tiny-added-f32"

    again = daemon.cli("add", str(elsewhere))  # the same file twice is refused, clearly
    assert again.returncode == 1
    assert f"{elsewhere} is already the model tiny-added-f32 (config: " in again.stderr
    taken = tmp_path / "downloads" / "copy" / "Tiny-Added-F32.gguf"
    taken.parent.mkdir()
    shutil.copyfile(tiny_gguf, taken)
    again = daemon.cli("add", str(taken))  # another file wanting the same id
    assert again.returncode == 1
    assert "already exists; choose another id with --id" in again.stderr

    moved = tmp_path / "downloads" / "other.gguf"
    shutil.copyfile(tiny_gguf, moved)
    r = daemon.cli("add", str(moved), "--move", "--id", "mine", "--name", "My Tiny")
    assert r.returncode == 0, r.stderr
    assert not moved.exists() and (real.models_dir / "mine" / "other.gguf").is_file()
    assert models(daemon)["mine"]["name"] == "My Tiny"

    link = tmp_path / "downloads" / "Linked-F32.gguf"
    link.symlink_to(tiny_gguf)
    r = daemon.cli("add", str(link), "--move")  # moving a link would not move the file
    assert r.returncode == 1 and "is a symlink; --move would move the link" in r.stderr
    assert link.is_symlink() and not (real.models_dir / "linked-f32").exists()

    bad = tmp_path / "notes.gguf"
    bad.write_text("these are my notes, not a model file")
    r = daemon.cli("add", str(bad))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"llmctl: {bad} is not a usable GGUF file: not a GGUF file "
                                "(bad magic)")
    assert not (real.models_dir / "notes").exists()


# --- pull -------------------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    fake = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)  # daemons and CLIs started now inherit these
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield fake
    fake.stop()


def pull(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return daemon.cli("pull", *args, env={**daemon.env})


def test_pull_downloads_verifies_registers(real: Home, tiny_gguf: Path, hub: FakeHub,
                                           make_daemon, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    tiny = tiny_gguf.read_bytes()
    other = write_tiny_llama(tmp_path / "other.gguf", seed=1).read_bytes()  # another blob
    hub.add("someone/Tiny-GGUF", {"Tiny-F32.gguf": tiny, "Tiny-Q8_0.gguf": other,
                                   "mmproj-Tiny-F16.gguf": write_tiny_projector(
                                       tmp_path / "p.gguf").read_bytes(),
                                   "README.md": b"# Tiny\n"})
    daemon = make_daemon()

    r = pull(daemon, "someone/Tiny-GGUF:F32", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "resolved" and kinds[-1] == "done", kinds
    assert events[0]["files"] == [{"file": "Tiny-F32.gguf", "size": len(tiny)}]
    assert events[0]["projector"] == "mmproj-Tiny-F16.gguf"
    assert {e["file"] for e in events if e["event"] == "verified"} == {
        "Tiny-F32.gguf", "mmproj-Tiny-F16.gguf"}
    assert events[-1]["next"] == "llmctl switch tiny-f32"
    # the token went to the hub, never to its storage host
    assert all(h.get("authorization") == "Bearer hf_test_token"
               for m, p, h in hub.requests if p.startswith(("/api/models", "/someone")))
    assert not any("authorization" in h for m, p, h in hub.requests if p.startswith("/lfs/"))

    entry = models(daemon)["tiny-f32"]
    assert entry["source"] == "config" and entry["mmproj"]
    link = Path(entry["file"])
    assert "models--someone--Tiny-GGUF" in str(link.resolve())  # in huggingface_hub's cache
    assert link.resolve().read_bytes() == tiny

    again = pull(daemon, "someone/Tiny-GGUF:Q8_0")  # a second quantisation, plain output
    assert again.returncode == 0, again.stderr
    assert "verified Tiny-Q8_0.gguf" in again.stderr
    assert again.stdout.splitlines()[-1] == "next: llmctl switch tiny-q8_0"
    assert daemon.switch("tiny-q8_0").status_code == 200  # with the pulled projector
    assert daemon.get("/backend/props").json()["modalities"]["vision"] is True
    assert chat(daemon)["model"] == "tiny-q8_0"


def test_pull_a_split_model_from_a_folder(real: Home, tiny_gguf: Path, hub: FakeHub,
                                         make_daemon, tmp_path: Path) -> None:
    shards = split_model(tiny_gguf, tmp_path / "shards", 2, "Tiny-Split-F32")
    hub.add("someone/Tiny-Split-GGUF", {f"F32/{p.name}": p.read_bytes() for p in shards})
    daemon = make_daemon()

    r = pull(daemon, "someone/Tiny-Split-GGUF:F32")
    assert r.returncode == 0, r.stderr
    assert "someone/Tiny-Split-GGUF F32: 2 shards" in r.stderr
    target = real.models_dir / "tiny-split-f32"
    assert sorted(p.name for p in target.glob("*.gguf")) == [p.name for p in shards]
    entry = models(daemon)["tiny-split-f32"]
    assert entry["shards"] == 2 and entry["available"], entry
    assert daemon.switch("tiny-split-f32").status_code == 200
    assert chat(daemon)["model"] == "tiny-split-f32"


def test_pull_resumes_an_interrupted_download(real: Home, hub: FakeHub, make_daemon,
                                              tmp_path: Path) -> None:
    # huggingface_hub writes in 10 MiB chunks and resumes from the last whole one: make the
    # file big enough, and hang up after 12 MB
    big = write_header(tmp_path / "big.gguf", name="Big", pad=24_000_000).read_bytes()
    hub.add("someone/Big-GGUF", {"Big-Q4_K_M.gguf": big})
    hub.drop_once["Big-Q4_K_M.gguf"] = 12_000_000
    daemon = make_daemon()

    r = pull(daemon, "someone/Big-GGUF")  # no quantisation named: Q4_K_M
    assert r.returncode == 0, r.stderr
    assert hub.ranges() == ["bytes=10485760-"]  # it asked for the rest, not the whole file
    assert "verified Big-Q4_K_M.gguf" in r.stderr
    entry = models(daemon)["big-q4_k_m"]
    assert Path(entry["file"]).resolve().read_bytes() == big


CHUNK = 10 * 1024 * 1024  # huggingface_hub's http_get writes whole 10 MiB chunks


@pytest.fixture(scope="module")
def big_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, loadable model (~20 MB) bigger than one write chunk, so an interrupted pull has
    a whole chunk on disk to resume from."""
    return write_tiny_llama(tmp_path_factory.mktemp("big") / "Big-Q4_K_M.gguf", n_embd=256,
                            n_layer=6, n_ff=768, name="big")


def partial_of(daemon: Daemon, repo: str, data: bytes) -> Path:
    """Where llmctl keeps a file's partial download (the README says so)."""
    folder = "models--" + repo.replace("/", "--")
    return (Path(daemon.env["HF_HOME"]) / "hub" / folder / "blobs"
            / f"{hashlib.sha256(data).hexdigest()}.incomplete")


def start_pull(daemon: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(ROOT / "bin" / "llmctl"), "pull", *args], env=daemon.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def size_at_least(path: Path, n: int) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    return size if size >= n else 0


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_an_interrupted_pull_resumes_in_the_next_run(real: Home, big_gguf: Path, hub: FakeHub,
                                                     make_daemon, stop: signal.Signals,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "120")  # no in-run retry past the stall
    big = big_gguf.read_bytes()
    name = "Big-Q4_K_M.gguf"
    hub.add("someone/Big-GGUF", {name: big})
    hub.stall[name] = CHUNK + 1_000_000  # the first run gets one chunk and a bit, then silence
    daemon = make_daemon()
    partial = partial_of(daemon, "someone/Big-GGUF", big)

    first = start_pull(daemon, "someone/Big-GGUF")
    try:
        kept = wait_for(lambda: size_at_least(partial, CHUNK), 60, "the first chunk on disk")
        first.send_signal(stop)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert kept == CHUNK
    if stop == signal.SIGINT:
        assert first.returncode == 130, err
        assert (f"{name}: interrupted; {CHUNK} of {len(big)} bytes are kept in {partial}. "
                "Run the same pull again to resume") in err
    else:
        assert first.returncode == -signal.SIGKILL
    assert partial.stat().st_size == CHUNK  # kept, whatever stopped the process

    # between the runs: no half model anywhere
    assert "big-q4_k_m" not in models(daemon)
    listing = daemon.cli("models")
    assert listing.returncode == 0 and "big" not in listing.stdout.lower(), listing.stdout
    assert not (real.models_dir / "big-q4_k_m").exists()
    snapshots = partial.parent.parent / "snapshots"
    assert not snapshots.exists() or not list(snapshots.rglob("*.gguf"))

    before = hub.served_bytes(name)
    r = pull(daemon, "someone/Big-GGUF", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert hub.ranges() == [f"bytes={CHUNK}-"]  # it asked only for the rest
    assert hub.served_bytes(name) - before == len(big) - CHUNK
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"event": "resume", "file": name, "bytes": CHUNK, "total": len(big),
            "partial": str(partial)} in events
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(e["resumed_from"] == CHUNK for e in progress)
    assert progress[-1]["bytes"] == len(big)
    kinds = [e["event"] for e in events]
    assert kinds.index("resume") < kinds.index("verified") < kinds.index("done")
    assert not partial.exists()

    entry = models(daemon)["big-q4_k_m"]
    assert entry["available"]
    assert Path(entry["file"]).resolve().read_bytes() == big
    assert daemon.switch("big-q4_k_m").status_code == 200
    assert chat(daemon)["model"] == "big-q4_k_m"


def test_a_second_pull_of_a_file_being_downloaded_is_refused(
        real: Home, tiny_gguf: Path, hub: FakeHub, make_daemon,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "120")
    data = tiny_gguf.read_bytes()
    hub.add("someone/Tiny-GGUF", {"Tiny-F32.gguf": data})
    hub.stall["Tiny-F32.gguf"] = 100_000
    daemon = make_daemon()

    first = start_pull(daemon, "someone/Tiny-GGUF:F32")
    try:
        wait_for(lambda: hub.served, 60, "the first pull to be downloading")
        second = pull(daemon, "someone/Tiny-GGUF:F32")  # both would write one partial file
        assert second.returncode == 1
        assert "another download of Tiny-F32.gguf is running (it holds " in second.stderr
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130
    # under one 10 MiB write chunk had arrived: nothing to resume from
    assert "Tiny-F32.gguf: interrupted; nothing was kept yet. Run the same pull again" in err
    assert "tiny-f32" not in models(daemon)

    r = pull(daemon, "someone/Tiny-GGUF:F32")
    assert r.returncode == 0, r.stderr
    assert models(daemon)["tiny-f32"]["available"]


def test_a_corrupted_partial_ends_in_a_checksum_error_then_a_clean_pull(
        real: Home, tiny_gguf: Path, hub: FakeHub, make_daemon) -> None:
    data = tiny_gguf.read_bytes()
    hub.add("someone/Tiny-GGUF", {"Tiny-F32.gguf": data})
    daemon = make_daemon()
    partial = partial_of(daemon, "someone/Tiny-GGUF", data)
    partial.parent.mkdir(parents=True)
    damaged = bytearray(data[:200_000])
    damaged[100_000] ^= 0xFF  # a bit rotted on disk since the earlier run
    partial.write_bytes(bytes(damaged))

    r = pull(daemon, "someone/Tiny-GGUF:F32")
    assert r.returncode == 1
    assert hub.ranges() == ["bytes=200000-"]
    assert "resuming: 195.3 KiB" in r.stderr
    assert ("Tiny-F32.gguf does not match the hub's checksum (sha256 ") in r.stderr
    assert ("(it continued 200000 bytes kept from an earlier run); the download was deleted, "
            "nothing was registered. Run the same pull again: it starts from scratch") in r.stderr
    assert not partial.exists() and not list(partial.parent.iterdir())
    assert "tiny-f32" not in models(daemon)
    assert not (real.models_dir / "tiny-f32").exists()

    served = hub.served_bytes("Tiny-F32.gguf")
    r = pull(daemon, "someone/Tiny-GGUF:F32")
    assert r.returncode == 0, r.stderr
    assert hub.ranges() == ["bytes=200000-"]  # no new Range: the whole file, from byte 0
    assert hub.served_bytes("Tiny-F32.gguf") - served == len(data)
    assert "resuming" not in r.stderr
    assert models(daemon)["tiny-f32"]["available"]


def test_a_partial_larger_than_the_file_is_discarded(real: Home, tiny_gguf: Path,
                                                     hub: FakeHub, make_daemon) -> None:
    data = tiny_gguf.read_bytes()
    hub.add("someone/Tiny-GGUF", {"Tiny-F32.gguf": data})
    daemon = make_daemon()
    partial = partial_of(daemon, "someone/Tiny-GGUF", data)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data + b"trailing junk")

    r = pull(daemon, "someone/Tiny-GGUF:F32")
    assert r.returncode == 0, r.stderr
    assert (f"starting over: the partial download {partial} holds {len(data) + 13} bytes, "
            f"more than the {len(data)} of the file on the hub") in r.stderr
    assert hub.ranges() == []
    assert Path(models(daemon)["tiny-f32"]["file"]).resolve().read_bytes() == data


def test_a_server_that_ignores_the_range_gets_the_whole_file_again(
        real: Home, tiny_gguf: Path, hub: FakeHub, make_daemon) -> None:
    data = tiny_gguf.read_bytes()
    hub.add("someone/Tiny-GGUF", {"Tiny-F32.gguf": data})
    hub.ignore_range.add("Tiny-F32.gguf")
    daemon = make_daemon()
    partial = partial_of(daemon, "someone/Tiny-GGUF", data)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:200_000])

    r = pull(daemon, "someone/Tiny-GGUF:F32")
    assert r.returncode == 0, r.stderr
    assert hub.ranges() == ["bytes=200000-"]  # asked, but was sent everything
    assert ("starting over: the server does not resume (it ignored the Range request); "
            "downloading the whole file") in r.stderr
    assert Path(models(daemon)["tiny-f32"]["file"]).resolve().read_bytes() == data


def test_pull_checksum_mismatch_registers_nothing(real: Home, tiny_gguf: Path, hub: FakeHub,
                                                  make_daemon) -> None:
    hub.add("someone/Bad-GGUF", {"Bad-F32.gguf": tiny_gguf.read_bytes()})
    hub.corrupt.add("Bad-F32.gguf")
    daemon = make_daemon()

    r = pull(daemon, "someone/Bad-GGUF:F32")
    assert r.returncode == 1
    assert "Bad-F32.gguf does not match the hub's checksum" in r.stderr
    assert "Run the same pull again" in r.stderr
    assert "bad-f32" not in models(daemon)
    assert not (real.models_dir / "bad-f32").exists()
    cache = Path(daemon.env["HF_HOME"]) / "hub" / "models--someone--Bad-GGUF"
    assert not [p for p in (cache / "blobs").iterdir()]  # the bad copy is gone from the cache

    hub.corrupt.clear()  # the hub is fixed: the same command now works
    r = pull(daemon, "someone/Bad-GGUF:F32")
    assert r.returncode == 0, r.stderr
    assert models(daemon)["bad-f32"]["available"]
    r = pull(daemon, "someone/Bad-GGUF:F32")  # once more: nothing new to do
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["already registered: bad-f32", "next: llmctl switch bad-f32"]


def test_pull_lists_what_the_repo_has(real: Home, tmp_path: Path, hub: FakeHub,
                                      make_daemon) -> None:
    header = write_header(tmp_path / "h.gguf").read_bytes()
    hub.add("someone/Multi-GGUF", {"Multi-Q8_0.gguf": header, "Multi-IQ4_XS.gguf": header})
    daemon = make_daemon()

    r = pull(daemon, "someone/Multi-GGUF")
    assert r.returncode == 5
    assert r.stderr.strip() == ("llmctl: someone/Multi-GGUF has several quantisations; name "
                                "one: someone/Multi-GGUF:IQ4_XS, someone/Multi-GGUF:Q8_0")
    r = pull(daemon, "someone/Multi-GGUF:Q5_K_M", "--json")
    assert r.returncode == 4
    error = json.loads(r.stdout.splitlines()[-1])
    assert error["event"] == "error" and error["choices"] == ["IQ4_XS", "Q8_0"]
    r = pull(daemon, "someone/Nothing-GGUF")
    assert r.returncode == 4 and "no repository someone/Nothing-GGUF" in r.stderr


def test_pull_without_the_hub_says_what_else_to_do(real: Home, hub: FakeHub,
                                                   make_daemon) -> None:
    daemon = make_daemon()
    hub.stop()  # HF_ENDPOINT now refuses connections, as when offline
    r = pull(daemon, "someone/Tiny-GGUF")
    assert r.returncode == 1
    assert "cannot reach the hub" in r.stderr and "`llmctl add` it" in r.stderr


def test_pull_through_the_daemon(real: Home, tiny_gguf: Path, hub: FakeHub,
                                 make_daemon) -> None:
    hub.add("someone/Tiny-GGUF", {"Tiny-F32.gguf": tiny_gguf.read_bytes()})
    daemon = make_daemon()

    refused = daemon.post("/pull", json={"repo": "someone/Tiny-GGUF"},
                          headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert "takes no request from a browser page" in refused.json()["error"]["message"]
    assert not (real.models_dir / "tiny-f32").exists()

    bad = daemon.post("/pull", json={"repo": "not a repo"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_spec"

    r = daemon.post("/pull", json={"repo": "someone/Tiny-GGUF"}, stream=True)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    events = [json.loads(line) for line in r.iter_lines() if line]
    assert [e["event"] for e in events][0] == "resolved"
    assert events[-1] == {"event": "done", "id": "tiny-f32", "name": "tiny F32",
                          "config_file": str(real.models_dir / "tiny-f32" / "config.yaml"),
                          "next": "llmctl switch tiny-f32"}
    assert "tiny-f32" in models(daemon)
    switched = daemon.switch_events("tiny-f32")
    assert switched[-1]["event"] == "ready"

    r = daemon.post("/pull", json={"repo": "someone/Tiny-GGUF:Q2_K"}, stream=True)
    (error,) = [json.loads(line) for line in r.iter_lines() if line]
    assert error["event"] == "error" and error["code"] == "not_found"
    assert "has no Q2_K quantisation" in error["message"]


def pull_children(daemon: Daemon, spec: str) -> list[int]:
    """The daemon's `llmctl pull` children for `spec`."""
    found = []
    for child in psutil.Process(daemon.pid).children(recursive=True):
        try:
            if spec in child.cmdline():
                found.append(child.pid)
        except psutil.Error:  # exited meanwhile
            pass
    return found


def test_a_pull_through_the_daemon_resumes_after_its_child_was_killed(
        real: Home, big_gguf: Path, hub: FakeHub, make_daemon,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "120")
    big = big_gguf.read_bytes()
    name = "Big-Q4_K_M.gguf"
    hub.add("someone/Big-GGUF", {name: big})
    hub.stall[name] = CHUNK + 1_000_000
    daemon = make_daemon()
    partial = partial_of(daemon, "someone/Big-GGUF", big)

    r = daemon.post("/pull", json={"repo": "someone/Big-GGUF"}, stream=True)
    assert r.status_code == 200
    wait_for(lambda: size_at_least(partial, CHUNK), 60, "the first chunk on disk", daemon.log)
    (child,) = pull_children(daemon, "someone/Big-GGUF")
    psutil.Process(child).kill()  # e.g. the OOM killer, or a reboot
    events = [json.loads(line) for line in r.iter_lines() if line]
    assert events[-1]["event"] == "error" and "exited with -9" in events[-1]["message"]
    assert "big-q4_k_m" not in models(daemon)

    r = daemon.post("/pull", json={"repo": "someone/Big-GGUF"}, stream=True)
    events = [json.loads(line) for line in r.iter_lines() if line]
    assert {"event": "resume", "file": name, "bytes": CHUNK, "total": len(big),
            "partial": str(partial)} in events
    assert events[-1]["event"] == "done" and events[-1]["id"] == "big-q4_k_m", events[-1]
    assert hub.ranges() == [f"bytes={CHUNK}-"]
    assert models(daemon)["big-q4_k_m"]["available"]


def test_a_pull_stops_when_its_client_leaves(real: Home, tmp_path: Path, hub: FakeHub,
                                            make_daemon) -> None:
    big = write_header(tmp_path / "big.gguf", name="Big", pad=8_000_000).read_bytes()
    hub.add("someone/Slow-GGUF", {"Slow-Q4_K_M.gguf": big})
    hub.trickle["Slow-Q4_K_M.gguf"] = 0.05  # ~1.3 MB/s: six seconds for the whole file
    daemon = make_daemon()

    def pulls() -> list[int]:
        return pull_children(daemon, "someone/Slow-GGUF")

    r = daemon.post("/pull", json={"repo": "someone/Slow-GGUF"}, stream=True)
    lines = r.iter_lines()
    events = [json.loads(next(lines)) for _ in range(3)]
    assert [e["event"] for e in events][:2] == ["resolved", "download"]
    assert pulls(), "the download runs in a child process"
    r.close()  # the client goes away mid-download

    wait_for(lambda: not pulls(), 20, "the pull child to be stopped", daemon.log)
    assert "slow-q4_k_m" not in models(daemon)
    assert not (real.models_dir / "slow-q4_k_m").exists()


def test_readme_documents_the_new_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for text in ("llmctl add", "llmctl pull", "POST /pull", "daemon.model_dirs",
                 "daemon.starter", "mmproj_file", "draft_model_file"):
        assert text in readme, text


DISK_FULL = """
import os, shutil, sys
real = shutil.disk_usage
FREE = int(os.environ["FAKE_FREE_BYTES"])
shutil.disk_usage = lambda path: type(real(path))(real(path).total, real(path).used, FREE)
from llmctl.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_pull_that_cannot_fit_is_refused_before_the_first_shard(
        real: Home, tiny_gguf: Path, hub: FakeHub, make_daemon, tmp_path: Path) -> None:
    """Free space is checked for the whole set: each shard alone fits (the disk seen by the
    pull is made small, the one fault here), both do not, and nothing is downloaded."""
    from llmctl.core.hf_fetch import DISK_MARGIN

    shards = split_model(tiny_gguf, tmp_path / "shards", 2, "Tiny-Split-F32")
    hub.add("someone/Big-GGUF", {p.name: p.read_bytes() for p in shards})
    sizes = [p.stat().st_size for p in shards]
    free = DISK_MARGIN + max(sizes) + min(sizes) // 2  # one shard fits, not both
    daemon = make_daemon()
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL)
    r = subprocess.run([sys.executable, str(script), "pull", "someone/Big-GGUF:F32"],
                       env={**daemon.env, "FAKE_FREE_BYTES": str(free),
                            "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "the 2 files of this pull need" in r.stderr, r.stderr
    assert f"({sum(sizes)} bytes) more in" in r.stderr and f"({free} bytes) are free" in r.stderr
    assert "models--someone--Big-GGUF" in r.stderr  # where
    assert not [p for p in hub.requests if p[1].startswith("/lfs/")]  # not one byte fetched
    assert "tiny-split-f32" not in models(daemon)


def test_files_without_a_sha256_are_verified_by_size(real: Home, tiny_gguf: Path,
                                                      hub: FakeHub, make_daemon,
                                                      tmp_path: Path) -> None:
    """A .gguf kept in git (the hub lists no sha256 for it) is checked against the size the
    hub lists, and the output says how each file was verified."""
    projector = write_tiny_projector(tmp_path / "p.gguf").read_bytes()
    hub.add("someone/Plain-GGUF", {"Plain-F32.gguf": tiny_gguf.read_bytes(),
                                    "mmproj-Plain-F16.gguf": projector})
    hub.plain.add("mmproj-Plain-F16.gguf")
    daemon = make_daemon()
    r = pull(daemon, "someone/Plain-GGUF:F32", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    verified = {e["file"]: e for e in map(json.loads, r.stdout.splitlines())
                if e["event"] == "verified"}
    assert verified["Plain-F32.gguf"]["method"] == "sha256"
    assert verified["mmproj-Plain-F16.gguf"]["method"] == "size"
    assert verified["mmproj-Plain-F16.gguf"]["size"] == len(projector)

    cached = Path(models(daemon)["plain-f32"]["mmproj"]).resolve()
    with open(cached, "r+b") as f:  # the cached copy loses its tail (a bad disk, a tool)
        f.truncate(len(projector) - 100)
    again = pull(daemon, "someone/Plain-GGUF:F32")
    assert again.returncode == 1, again.stdout + again.stderr
    assert (f"mmproj-Plain-F16.gguf has {len(projector) - 100} bytes, but the hub lists "
            f"{len(projector)}") in again.stderr
    assert not cached.exists()  # removed from the cache: the next pull fetches it again
    third = pull(daemon, "someone/Plain-GGUF:F32")
    assert third.returncode == 0, third.stderr
    assert "verified mmproj-Plain-F16.gguf (size only: the hub lists no sha256 for it)" in \
        third.stderr
