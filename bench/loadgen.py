"""Keep-alive HTTP load: one `Conn` per simulated client (http.client, like the `openai` SDK's
pooled connections), run sequentially or from N threads. Times are time.perf_counter().

Streaming replies are read with read1() (at most one recv per call) and split into SSE events
as they arrive, so each event gets the time its last byte reached the client.
"""

from __future__ import annotations

import http.client
import json
import select
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
CHAT = "/v1/chat/completions"
TIMEOUT = 60.0
JSON = {"Content-Type": "application/json"}


def chat_body(max_tokens: int, stream: bool, timings: bool = False,
              model: str = "local") -> bytes:
    """A chat request that generates exactly `max_tokens` tokens (greedy, EOS ignored).
    `model`: what llmctld and llama-server ignore, and llama-server's router routes by."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hi"}],
                            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0,
                            "stream": stream}
    if timings:  # llama-server adds its own per-chunk generation time to every SSE chunk
        body["timings_per_token"] = True
    return json.dumps(body).encode()


class HTTPError(Exception):
    pass


@dataclass
class Reply:
    status: int
    t0: float  # request sent
    t_head: float  # status line and headers parsed
    t_first: float  # first body byte (streaming: first complete SSE event)
    t_end: float  # last byte
    events: int = 0
    marks: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, SSE event)
    reused: bool = False

    @property
    def total(self) -> float:
        return self.t_end - self.t0

    @property
    def ttfb(self) -> float:
        return self.t_first - self.t0


class Conn:
    """One keep-alive client connection; reconnects on the next request after an error.

    With `retry_stale` (as the openai SDK and most HTTP clients do) a request that fails on a
    reused connection before any response byte is sent once more on a fresh one: llama-server
    closes the connection after every streamed response without saying so, and the close can
    race the next request. `retries` counts them."""

    STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)

    def __init__(self, port: int, timeout: float = TIMEOUT, retry_stale: bool = True):
        self.port = port
        self.timeout = timeout
        self.retry_stale = retry_stale
        self.conn: http.client.HTTPConnection | None = None
        self.used = 0
        self.retries = 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def connect(self) -> None:
        """Open the connection now (so connection errors can be told from request errors).
        Like urllib3, first drop a kept-alive connection the server has closed meanwhile
        (llama-server closes idle ones after 5 s)."""
        if self.conn is not None and _closed_by_peer(self.conn):
            self.close()
        if self.conn is None:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                conn.connect()
            except BaseException:
                conn.close()
                raise
            self.conn, self.used = conn, 0

    def request(self, method: str, path: str, body: bytes | None = None, *,
                keep_marks: bool = False) -> Reply:
        try:
            return self._request(method, path, body, keep_marks)
        except self.STALE as e:
            if not (self.retry_stale and getattr(e, "reused", False)
                    and getattr(e, "stage", "") == "head"):
                raise
        self.retries += 1
        return self._request(method, path, body, keep_marks)

    def _request(self, method: str, path: str, body: bytes | None, keep_marks: bool) -> Reply:
        self.connect()
        conn = self.conn
        assert conn is not None
        reused = self.used > 0
        stage = "head"
        try:
            t0 = time.perf_counter()
            conn.request(method, path, body=body, headers=JSON if body else {})
            resp = conn.getresponse()
            t_head = time.perf_counter()
            stage = "body"
            if resp.getheader("Content-Type", "").startswith("text/event-stream"):
                reply = _read_sse(resp, t0, t_head, keep_marks)
            else:
                data = resp.read()
                t_end = time.perf_counter()
                reply = Reply(resp.status, t0, t_head, t_head if data else t_end, t_end)
            reply.reused = reused
            self.used += 1
            if resp.will_close:
                self.close()
        except BaseException as e:
            self.close()
            e.reused = reused  # type: ignore[attr-defined]
            e.stage = stage  # type: ignore[attr-defined]
            raise
        if reply.status != 200:
            raise HTTPError(f"HTTP {reply.status}")
        return reply

    def chat(self, body: bytes, keep_marks: bool = False) -> Reply:
        return self.request("POST", CHAT, body, keep_marks=keep_marks)


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _read_sse(resp: http.client.HTTPResponse, t0: float, t_head: float,
              keep_marks: bool) -> Reply:
    buf = b""
    events = 0
    marks: list[tuple[float, bytes]] = []
    t_first = 0.0
    read = resp.read1
    last = b""
    while True:
        data = read(65536)
        if not data:
            break
        t = time.perf_counter()
        if not keep_marks:  # just count event ends ("\n\n"), as cheaply as possible
            n = data.count(b"\n\n") + (last == b"\n" and data[:1] == b"\n")
            if n and not events:
                t_first = t
            events += n
            last = data[-1:]
            continue
        buf += data
        while True:
            i = buf.find(b"\n\n")
            if i < 0:
                break
            if not events:
                t_first = t
            events += 1
            if keep_marks:
                marks.append((t, buf[:i]))
            buf = buf[i + 2:]
    t_end = time.perf_counter()
    return Reply(resp.status, t0, t_head, t_first or t_end, t_end, events, marks)


def sequential(port: int, body: bytes, n: int, max_seconds: float, conn: Conn | None = None,
               keep_marks: bool = False, errors: list[str] | None = None) -> list[Reply]:
    """Up to `n` requests one after another on one keep-alive connection. A failed request is
    appended to `errors` (when given) and the loop goes on; 10 failures in a row end it."""
    conn = conn or Conn(port)
    out = []
    deadline = time.perf_counter() + max_seconds
    streak = 0
    for i in range(n):
        try:
            out.append(conn.chat(body, keep_marks))
            streak = 0
        except (OSError, http.client.HTTPException, HTTPError) as e:
            message = (f"request {i + 1} to port {port} (connection used {conn.used} times): "
                       f"{type(e).__name__}: {e}")
            streak += 1
            if errors is None or streak >= 10:
                raise RuntimeError(message) from e
            errors.append(message)
        if time.perf_counter() > deadline:
            break
    return out


@dataclass
class LoadResult:
    replies: list[Reply]
    errors: int
    elapsed: float
    client_cpu: float = 0.0  # CPU seconds the client process used per second of the run

    @property
    def rate(self) -> float:
        return len(self.replies) / self.elapsed if self.elapsed else 0.0

    @property
    def events(self) -> int:
        return sum(r.events for r in self.replies)


def concurrent(port: int, body: bytes, clients: int, seconds: float,
               keep_marks: bool = False) -> LoadResult:
    """`clients` threads, each with its own keep-alive connection, sending back to back for
    `seconds`. Requests still running at the deadline finish and count."""
    replies: list[list[Reply]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    box: dict[str, float] = {}

    def client(i: int) -> None:
        conn = Conn(port)
        try:
            conn.connect()
        except OSError:
            errors[i] += 1
        start.wait(30)
        deadline = box["deadline"]
        while time.perf_counter() < deadline:
            try:
                replies[i].append(conn.chat(body, keep_marks))
            except (OSError, http.client.HTTPException, HTTPError):
                errors[i] += 1
                time.sleep(0.001)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    box["deadline"] = t0 + seconds
    start.wait(30)
    cpu0 = time.process_time()
    for t in threads:
        t.join(seconds + TIMEOUT)
    cpu = time.process_time() - cpu0
    flat = [r for rs in replies for r in rs]
    end = max((r.t_end for r in flat), default=time.perf_counter())
    return LoadResult(flat, sum(errors), end - t0, cpu / (end - t0) if end > t0 else 0.0)


# --- statistics -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear interpolation; None for no data."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in seconds]
    return {"n": len(ms), "p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99),
            "mean": statistics.fmean(ms) if ms else None, "max": max(ms) if ms else None}


def median(values: list[float]) -> float:
    """The median; NaN for no data (prints as n/a)."""
    return statistics.median(values) if values else float("nan")


class ClientThreads:
    """Client threads that run from `with` until its end, then are told to stop and joined
    (each within JOIN seconds). Subclasses add threads with `spawn()` and count under
    `_lock`; their loops end when `_stop` is set."""

    JOIN = 40.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def spawn(self, target: Any, *args: Any, n: int = 1) -> None:
        self.threads += [threading.Thread(target=target, args=args, daemon=True)
                         for _ in range(n)]

    def __enter__(self) -> Any:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(self.JOIN)

