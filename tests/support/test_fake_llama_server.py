"""Self-tests of the scripted fake llama-server (fast: stdlib only, no real backend)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_llama_server.py"
sys.path.insert(0, str(HERE))
from fake_llama_server import write_fake_model  # noqa: E402
from harness import Ports, wait_for  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux only (signals, /proc)")


PORTS = Ports()


def free_port() -> int:
    return PORTS.take()


class Fake:
    def __init__(self, tmp_path, script=None, *, extra=(), env=None, model=None, size=0, port=None):
        self.port = port or free_port()
        if model is None:
            model = tmp_path / "model.gguf"
            write_fake_model(model, script or {}, size=size)
        self.model = str(model)
        self.stderr_path = tmp_path / f"fake-{self.port}.err"
        e = dict(os.environ)
        e.pop("FAKE_LLAMA_FLAVOR", None)
        e.update(env or {})
        args = [str(FAKE), "-m", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                "-c", "0", "-ngl", "999", "-ctk", "q8_0", "-ctv", "q8_0", "-np", "1",
                "--metrics", "--alias", "fake-id", *extra]
        if (env or {}).get("FAKE_LLAMA_FLAVOR") != "old":
            args += ["-fa", "auto", "-lm", "none", "--no-webui"]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(self.stderr_path, "wb"), env=e)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def conn(self, timeout=5):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path):
        c = self.conn()
        c.request("GET", path)
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()

    def post(self, path, body, headers=None, timeout=10):
        c = self.conn(timeout)
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()

    def health(self):
        try:
            return self.get("/health")[0]
        except OSError:
            return None

    def wait_ready(self, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.stderr
            if self.health() == 200:
                return time.monotonic() - self.t0
            time.sleep(0.02)  # ok: poll interval of a bounded wait
        raise AssertionError("not ready")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def fake(tmp_path):
    made = []

    def make(*a, **kw):
        f = Fake(tmp_path, *a, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def sse_events(raw: bytes):
    return [e[len(b"data: "):] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


# ---------------------------------------------------------------------- command line


def run(args, env=None):
    e = dict(os.environ)
    e.pop("FAKE_LLAMA_FLAVOR", None)
    e.update(env or {})
    return subprocess.run([str(FAKE), *args], capture_output=True, text=True, env=e, timeout=10)


def test_help_new_and_old():
    r = run(["--help"])
    assert r.returncode == 0
    assert r.stdout == (HERE / "llama_server_help_b11434.txt").read_text()
    assert "-lm,   --load-mode MODE" in r.stdout and "--no-mmap" not in r.stdout
    r = run(["--help"], {"FAKE_LLAMA_FLAVOR": "old"})
    assert r.returncode == 0
    assert "--no-mmap" in r.stdout and "--load-mode" not in r.stdout and "--no-slots" not in r.stdout


@pytest.mark.parametrize("flavor,args,bad", [
    ("new", ["--no-mmap"], "--no-mmap"),
    ("new", ["--bogus"], "--bogus"),
    ("old", ["-lm", "none"], "-lm"),
    ("old", ["--no-slots"], "--no-slots"),
])
def test_invalid_argument(flavor, args, bad):
    r = run(args, {"FAKE_LLAMA_FLAVOR": flavor})
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: invalid argument: {bad}"


def test_bare_fa_swallows_next_argument():
    r = run(["-m", "x", "-fa", "-lm", "none"])
    assert r.returncode == 1
    assert "unknown value for --flash-attn: '-lm'" in r.stderr
    assert run(["-m", "x", "-fa", "--bogus"], {"FAKE_LLAMA_FLAVOR": "old"}).stderr.strip() == \
        "error: invalid argument: --bogus"


def test_version_goes_to_stderr():
    r = run(["--version"])
    assert r.returncode == 0 and r.stdout == "" and "version:" in r.stderr


# ---------------------------------------------------------------------- load phase


def test_missing_model_exits_1(fake, tmp_path):
    f = fake(model=tmp_path / "nope.gguf")
    assert f.proc.wait(5) == 1
    assert "failed to open GGUF file" in f.stderr
    assert "exiting due to model loading error" in f.stderr


def test_gguf_magic_default_behaviour(fake, tmp_path):
    m = tmp_path / "m.gguf"
    m.write_bytes(b"GGUF" + b"\0" * 100)
    f = fake(model=m)
    assert f.wait_ready() < 3
    st, _, body = f.get("/v1/models")
    assert st == 200 and json.loads(body)["data"][0]["id"] == "fake-id"


def test_loading_then_ready(fake):
    f = fake({"load_seconds": 0.6})
    wait_for(lambda: f.health() is not None, 10, "the fake to bind its port")
    st, hdrs, body = f.get("/v1/models")
    assert st == 503
    assert json.loads(body) == {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
    assert f.wait_ready() >= 0.6
    assert "model loaded" in f.stderr


def test_bind_delay(fake):
    f = fake({"bind_delay": 0.6, "load_seconds": 0})
    time.sleep(0.3)  # ok: checks that nothing listens yet, halfway through the delay
    assert f.health() is None  # connection refused
    assert f.wait_ready() >= 0.6


def test_read_bytes_during_load(fake):
    size = 40_000_000
    f = fake({"load_seconds": 1.0, "read_bytes_during_load": True}, size=size)
    seen = []
    while f.health() != 200:
        with open(f"/proc/{f.proc.pid}/io") as io:
            seen.append(int(io.readline().split()[1]))
        time.sleep(0.05)  # ok: sampling interval while the load runs
    with open(f"/proc/{f.proc.pid}/io") as io:
        final = int(io.readline().split()[1])
    assert final >= size
    assert any(0.2 * size < r < 0.8 * size for r in seen), seen


def test_never_ready(fake):
    f = fake({"never_ready": True, "load_seconds": 0})
    time.sleep(1.0)  # ok: checks that readiness never comes
    assert f.health() == 503


def test_exit_during_load(fake):
    f = fake({"load_seconds": 5, "exit_during_load": {"after": 0.3, "code": 3}})
    assert f.proc.wait(5) == 3
    assert "exiting due to model loading error" in f.stderr


def test_port_in_use(fake):
    f1 = fake({"load_seconds": 0})
    f1.wait_ready()
    f2 = fake(port=f1.port)
    assert f2.proc.wait(5) == 1
    assert "couldn't bind HTTP server socket" in f2.stderr


# ---------------------------------------------------------------------- signals


def test_sigterm_during_load_kills(fake):
    f = fake({"load_seconds": 5})
    wait_for(lambda: f.health() is not None, 10, "the fake to bind its port")
    f.proc.send_signal(signal.SIGTERM)
    assert f.proc.wait(2) == -signal.SIGTERM


def test_sigterm_when_ready_exits_0(fake):
    f = fake({"load_seconds": 0})
    f.wait_ready()
    f.proc.send_signal(signal.SIGTERM)
    assert f.proc.wait(2) == 0


def test_ignore_sigterm(fake):
    f = fake({"load_seconds": 0, "ignore_sigterm": True})
    f.wait_ready()
    f.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # ok: checks that SIGTERM changes nothing
    assert f.proc.poll() is None and f.health() == 200
    f.proc.kill()
    assert f.proc.wait(2) == -signal.SIGKILL


def _raw_request(port, body: dict, path="/v1/chat/completions"):
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % (path.encode(), len(data)) + data)
    return s


def _read_to_end(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or resets it)."""
    data = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            return data
        if not d:
            return data
        data += d


def _sigterm_with_request_in_flight(fake):
    """A fake with hang_nonstream_on_sigterm, a non-streaming request in flight, and one
    SIGTERM sent: the state in which the real llama-server hangs."""
    f = fake({"load_seconds": 0, "hang_nonstream_on_sigterm": True, "slow_response_seconds": 30})
    f.wait_ready()
    s = _raw_request(f.port, {**CHAT, "max_tokens": 4})
    wait_for(lambda: b"llamacpp:requests_processing 1" in f.get("/metrics")[2], 10,
             "the request to be in flight")
    f.proc.send_signal(signal.SIGTERM)
    return f, s


def test_hang_nonstream_on_sigterm(fake):
    f, s = _sigterm_with_request_in_flight(fake)
    time.sleep(1.0)  # ok: checks that SIGTERM does not end it while the client waits
    assert f.proc.poll() is None  # hangs while the client is connected
    s.close()
    assert f.proc.wait(3) == 0


def test_second_sigterm_exits_at_once(fake):
    f, s = _sigterm_with_request_in_flight(fake)
    time.sleep(0.3)  # ok: two separate signals, not one coalesced
    f.proc.send_signal(signal.SIGTERM)
    assert f.proc.wait(2) == 1
    assert "Received second interrupt" in f.stderr
    s.close()


def test_hang_stream_on_sigterm(fake):
    f = fake({"load_seconds": 0, "hang_stream_on_sigterm": True, "stream_hang_seconds": 1,
              "chunk_interval": 0.05})
    f.wait_ready()
    s = _raw_request(f.port, {**CHAT, "max_tokens": 1000, "stream": True})
    s.settimeout(5)
    assert s.recv(65536).startswith(b"HTTP/1.1 200")  # streaming has begun
    f.proc.send_signal(signal.SIGTERM)
    s.settimeout(5)
    t = time.monotonic()
    data = _read_to_end(s)
    assert 0.8 < time.monotonic() - t < 3
    assert data.endswith(b"3\r\n:\n\n\r\n") and b"[DONE]" not in data
    assert f.proc.wait(3) == 0


def test_stream_cut_on_sigterm(fake):
    f = fake({"load_seconds": 0, "chunk_interval": 0.05})
    f.wait_ready()
    s = _raw_request(f.port, {**CHAT, "max_tokens": 1000, "stream": True})
    s.settimeout(5)
    # The head and the first chunk may arrive in one recv or several: read until a
    # chunk has been seen, so the signal surely lands mid-stream.
    data = b""
    while b"chat.completion.chunk" not in data:
        d = s.recv(65536)
        assert d, f"stream closed before its first chunk: {data!r}"
        data += d
    assert data.startswith(b"HTTP/1.1 200")
    f.proc.send_signal(signal.SIGTERM)
    data += _read_to_end(s)
    # cut: no [DONE] and no terminating zero-length chunk, like llama-server
    assert b"[DONE]" not in data and not data.endswith(b"0\r\n\r\n")
    assert f.proc.wait(3) == 0


# ---------------------------------------------------------------------- completions


def test_chat_nonstream_and_stream(fake):
    f = fake({"load_seconds": 0})
    f.wait_ready()
    st, hdrs, body = f.post("/v1/chat/completions", {**CHAT, "max_tokens": 5})
    obj = json.loads(body)
    assert st == 200 and obj["object"] == "chat.completion"
    assert obj["usage"]["completion_tokens"] == 5 and obj["choices"][0]["finish_reason"] == "length"
    assert int(hdrs["Content-Length"]) == len(body)

    st, hdrs, body = f.post("/v1/chat/completions", {**CHAT, "max_tokens": 3, "stream": True})
    assert st == 200 and hdrs["Content-Type"] == "text/event-stream"
    assert hdrs["Transfer-Encoding"] == "chunked"
    ev = sse_events(body)
    assert ev[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_stream_chunks_default_and_completions(fake):
    f = fake({"load_seconds": 0, "stream_chunks": 4, "tokens": ["a", "b"]})
    f.wait_ready()
    _, _, body = f.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert len(sse_events(body)) == 1 + 4 + 1 + 1
    st, _, body = f.post("/v1/completions", {"prompt": "x", "max_tokens": 3})
    assert st == 200 and json.loads(body)["choices"][0]["text"] == "aba"


def test_crash_after_chunks(fake):
    f = fake({"load_seconds": 0, "crash_after_chunks": 2})
    f.wait_ready()
    s = _raw_request(f.port, {**CHAT, "max_tokens": 10, "stream": True})
    s.settimeout(5)
    data = _read_to_end(s)
    assert data.count(b'"content":"') == 2 and b"[DONE]" not in data
    assert f.proc.wait(3) == -signal.SIGKILL


def test_error_after_chunks(fake):
    f = fake({"load_seconds": 0, "error_after_chunks": 1})
    f.wait_ready()
    _, _, body = f.post("/v1/chat/completions", {**CHAT, "max_tokens": 10, "stream": True})
    ev = sse_events(body)
    assert b"[DONE]" not in ev and "error" in json.loads(ev[-1])


def test_crash_on_request(fake):
    f = fake({"load_seconds": 0, "crash_on_request": True})
    f.wait_ready()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        f.post("/v1/chat/completions", {**CHAT, "max_tokens": 2})
    assert f.proc.wait(3) == -signal.SIGKILL


def test_slow_response(fake):
    f = fake({"load_seconds": 0, "slow_response_seconds": 0.5})
    f.wait_ready()
    t = time.monotonic()
    assert f.post("/v1/chat/completions", {**CHAT, "max_tokens": 2})[0] == 200
    assert time.monotonic() - t >= 0.5


def test_keep_alive_and_close_after_response(fake):
    f = fake({"load_seconds": 0})
    f.wait_ready()
    c = f.conn()
    for _ in range(3):
        c.request("GET", "/health")
        r = c.getresponse()
        r.read()
        assert r.status == 200
    sock1 = c.sock
    c.request("GET", "/health")
    c.getresponse().read()
    assert c.sock is sock1  # same connection reused

    g = fake({"load_seconds": 0, "close_after_response": True})
    g.wait_ready()
    s = socket.create_connection(("127.0.0.1", g.port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(3)
    data = _read_to_end(s)
    assert data.startswith(b"HTTP/1.1 200") and b"connection: close" not in data.lower()


# ---------------------------------------------------------------------- other routes


def test_echo(fake):
    f = fake({"load_seconds": 0})
    f.wait_ready()
    st, _, body = f.post("/v1/echo?a=1&b=x", {"k": "v"}, headers={"X-Custom": "yes"})
    e = json.loads(body)
    assert st == 200 and e["method"] == "POST" and e["path"] == "/v1/echo"
    assert e["query"] == "a=1&b=x" and e["args"] == {"a": "1", "b": "x"}
    assert e["headers"]["X-Custom"] == "yes" and e["json"] == {"k": "v"}
    # chunked request body
    c = f.conn()
    c.request("PUT", "/v1/echo", body=iter([b"hel", b"lo"]), encode_chunked=True,
              headers={"Transfer-Encoding": "chunked"})
    e = json.loads(c.getresponse().read())
    assert e["method"] == "PUT" and e["body"] == "hello"


def test_props_slots_metrics_404(fake):
    f = fake({"load_seconds": 0, "n_ctx_train": 1234})
    f.wait_ready()
    props = json.loads(f.get("/props")[2])
    assert props["default_generation_settings"]["n_ctx"] == 1234 and props["total_slots"] == 1
    assert json.loads(f.get("/slots")[2])[0]["is_processing"] is False
    st, hdrs, body = f.get("/metrics")
    assert st == 200 and b"llamacpp:requests_processing 0" in body
    st, hdrs, body = f.get("/nope")
    assert st == 404 and json.loads(body)["error"]["code"] == 404

    g = fake({"load_seconds": 0}, extra=["--no-slots", "--api-key", "k1"])
    g.wait_ready()
    assert g.get("/v1/models")[0] == 200
    assert g.get("/slots")[0] == 401
    c = g.conn()
    c.request("GET", "/slots", headers={"Authorization": "Bearer k1"})
    assert c.getresponse().status == 501


def test_old_flavor_slots_opt_in(fake):
    f = fake({"load_seconds": 0}, env={"FAKE_LLAMA_FLAVOR": "old"}, extra=["-fa"])
    f.wait_ready()
    assert f.get("/slots")[0] == 501
    assert "main: server is listening on http://127.0.0.1:" in f.stderr


def test_requests_beyond_np_are_deferred(fake):
    f = fake({"load_seconds": 0, "slow_response_seconds": 0.8})
    f.wait_ready()
    s1 = _raw_request(f.port, {**CHAT, "max_tokens": 1})
    s2 = _raw_request(f.port, {**CHAT, "max_tokens": 1})
    wait_for(lambda: b"llamacpp:requests_deferred 1" in f.get("/metrics")[2], 10,
             "the second request to be deferred")
    body = f.get("/metrics")[2]
    assert b"llamacpp:requests_processing 1" in body and b"llamacpp:requests_deferred 1" in body
    assert json.loads(f.get("/slots")[2])[0]["is_processing"] is True
    s1.close()
    s2.close()
