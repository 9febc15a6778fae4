"""What one loopback hop between two processes costs on this machine: the floor under any
proxy's added latency.

A proxy puts two hops on a request's path that a direct call does not have (client -> proxy
becomes client -> proxy -> llama-server, and the answer comes back the same way): each is a
send() that wakes a process blocked in epoll, often on another CPU. The section measures that
with two plain processes ping-ponging 280 bytes over TCP on 127.0.0.1: once where the
scheduler puts them (as in every other section), once with both on one CPU. On bare metal a
cross-CPU wake-up costs microseconds; in a VM whose idle vCPUs halt it can cost hundreds, and
then one round trip of hops is already more than a 0.3 ms latency budget.
"""

from __future__ import annotations

import os
import select
import socket
import statistics
import time
from typing import Any

from bench.plan import Ctx

PAYLOAD = b"y" * 280  # about a chat request's head and body
ANSWER = b"x" * 200


def _echo(listener: socket.socket, cpu: int | None) -> None:
    """The child: wait in epoll (as llama-server and the proxy do), answer every message."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    poller = select.epoll()
    poller.register(conn.fileno(), select.EPOLLIN)
    while True:
        poller.poll()
        if not conn.recv(65536):
            return
        conn.sendall(ANSWER)


def ping_pong(n: int, cpu: int | None) -> dict[str, float]:
    """`n` round trips; p50/p90 of the round trip and of the send() call alone, in µs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            _echo(listener, cpu)
        finally:
            os._exit(0)
    mask = os.sched_getaffinity(0)
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        sock = socket.create_connection(listener.getsockname(), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sends, trips = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            sock.sendall(PAYLOAD)
            t1 = time.perf_counter()
            got = 0
            while got < len(ANSWER):
                got += len(sock.recv(65536))
            trips.append(time.perf_counter() - t0)
            sends.append(t1 - t0)
        sock.close()
    finally:
        os.sched_setaffinity(0, mask)
        listener.close()
        os.waitpid(pid, 0)

    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1e6

    return {"rtt_p50_us": statistics.median(trips) * 1e6, "rtt_p90_us": p(trips, 90),
            "send_p50_us": statistics.median(sends) * 1e6, "n": n}


def loopback_hops(ctx: Ctx) -> None:
    n = 500 if ctx.plan.name == "quick" else 2000
    out: dict[str, Any] = {}
    for label, cpu in (("scheduled", None), ("one_cpu", min(os.sched_getaffinity(0)))):
        with ctx.meter.round(f"hops {label}"):
            out[label] = ping_pong(n, cpu)
    ctx.results["hops"] = out
    ctx.say("loopback round trip p50: {:.0f} µs as scheduled, {:.0f} µs on one CPU (send() "
            "alone {:.0f} / {:.0f} µs)".format(out["scheduled"]["rtt_p50_us"],
                                                out["one_cpu"]["rtt_p50_us"],
                                                out["scheduled"]["send_p50_us"],
                                                out["one_cpu"]["send_p50_us"]))
