"""A big or slow catalogue never holds up the streams: the proxy reads the model folders in a
thread of gevent's pool (api/config_view.py), keeps the catalog while nothing on disk changed
(backend/catalog_memo.py), and still shows an edit at once. The figures are bench/catalog.py's."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time

import requests
import yaml

from harness import Daemon, Home, wait_for


def stream_in_thread(daemon: Daemon, chunks: list[float]) -> threading.Thread:
    def read() -> None:
        r = requests.post(daemon.url + "/v1/chat/completions", stream=True, timeout=60, json={
            "model": "local", "stream": True, "max_tokens": 2000,
            "messages": [{"role": "user", "content": "hi"}]})
        for _ in r.iter_content(chunk_size=None):
            chunks.append(time.monotonic())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def open_writer(fifo: str) -> int | None:
    """The FIFO's write end once a reader has it open (ENXIO until then)."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return None
        raise


def test_streams_flow_while_a_listing_waits_on_a_stuck_file(fake_home: Home,
                                                           make_daemon) -> None:
    """A model file that cannot be read yet (a FIFO: opening it blocks until a writer comes,
    like a file on a hung network mount) keeps GET /models waiting; meanwhile a stream's
    chunks keep coming, and the listing ends once the file can be read. When the scan ran on
    the proxy's loop, every stream stopped with it."""
    fake_home.add_model("m", script={"chunk_interval": 0.02, "stream_chunks": 2000})
    daemon = make_daemon()
    assert daemon.switch("m").status_code == 200
    chunks: list[float] = []
    stream_in_thread(daemon, chunks)
    wait_for(lambda: len(chunks) >= 5, 20, "the stream to start")
    stuck = fake_home.models_dir / "stuck"
    stuck.mkdir()
    fifo = str(stuck / "Stuck-Q4_K_M.gguf")
    os.mkfifo(fifo)
    answers: list[requests.Response] = []
    listing = threading.Thread(target=lambda: answers.append(
        requests.get(daemon.url + "/models", timeout=120)), daemon=True)
    listing.start()
    try:
        # the scan blocks opening the FIFO (until a writer comes): 20 chunks meanwhile
        seen = len(chunks)
        wait_for(lambda: len(chunks) >= seen + 20, 20,
                 "20 more chunks of the stream while the scan is stuck", daemon.log)
        assert listing.is_alive() and not answers  # the listing really waits on the scan
    finally:
        writer = wait_for(lambda: open_writer(fifo), 20, "the scan to open the stuck file")
        with contextlib.suppress(OSError):
            os.write(writer, b"not a gguf header, and long enough to be read" * 4)
        os.close(writer)
    listing.join(60)
    assert answers and answers[0].status_code == 200
    stuck_entry = next(m for m in answers[0].json()["models"] if m["file"] == fifo)
    assert not stuck_entry["available"]


def test_an_edit_shows_in_the_next_listing(fake_home: Home, make_daemon) -> None:
    """The catalog is kept while nothing changed, so these are what must break the keeping:
    an edited config.yaml, a new model, a removed one, an edited global config."""
    fake_home.add_model("a", aliases=["first"])
    fake_home.add_model("b")
    daemon = make_daemon()

    def listed() -> dict[str, dict]:
        r = daemon.get("/models")
        assert r.status_code == 200
        return {m["id"]: m for m in r.json()["models"]}

    assert listed()["a"]["aliases"] == ["first"]
    config = fake_home.models_dir / "a" / "config.yaml"
    doc = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**doc, "aliases": ["second"]}))
    assert listed()["a"]["aliases"] == ["second"]
    fake_home.add_model("c")
    assert "c" in listed()
    for f in (fake_home.models_dir / "b").iterdir():
        f.unlink()
    (fake_home.models_dir / "b").rmdir()
    assert "b" not in listed()
    fake_home.write_config(llama={"ctx_size": 1234})
    assert listed()["a"]["ctx_size"] == 1234
