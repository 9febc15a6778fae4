"""The lifecycle loop never waits for a process: while a llama-server that ignores SIGTERM
takes its stopTimeoutMs to die, the lifecycle worker still answers a new proxy's Status, a
second stop, and switches (the later one supersedes the earlier)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import requests

from harness import Home, owned_backends, wait_for

STOP_SECONDS = 8.0  # under the old proxy's 10 s drain: the stop is answered by it


def test_commands_are_answered_while_a_backend_stops(fake_home: Home, make_daemon) -> None:
    fake_home.write_config(server={"stopTimeoutMs": int(STOP_SECONDS * 1000)})
    fake_home.add_model("stubborn", script={"ignore_sigterm": True})
    fake_home.add_model("first")
    fake_home.add_model("second")
    daemon = make_daemon()
    assert daemon.switch("stubborn").status_code == 200
    results: dict[str, tuple[float, requests.Response]] = {}

    def run(name: str, call: Callable[[], requests.Response]) -> threading.Thread:
        def go() -> None:
            response = call()
            results[name] = (time.monotonic(), response)

        thread = threading.Thread(target=go)
        thread.start()
        return thread

    def post(path: str) -> Callable[[], requests.Response]:
        return lambda: requests.post(daemon.url + path, timeout=60)

    started = time.monotonic()
    threads = [run("stop", post("/stop"))]
    daemon.wait_state("stopping", 10)
    threads.append(run("stop2", post("/stop")))
    threads.append(run("first", post("/switch/first")))
    wait_for(lambda: "switch to first waits for stubborn" in daemon.log.read_text(), 10,
             "the first switch to wait for the stop", daemon.log)
    threads.append(run("second", post("/switch/second")))
    wait_for(lambda: "first" in results, STOP_SECONDS, "the first switch to be superseded",
             daemon.log)
    # a new proxy worker's first look (Status) is answered during the stop too: state.json
    # still says ready (stopping is not written), so `stopping` can only come from the reply
    old_proxy = daemon.workers()["proxy"]
    assert daemon.post("/restart-proxy").status_code == 202

    def new_proxy_status() -> dict | None:
        r = requests.get(daemon.url + "/status", timeout=10)
        assert r.status_code == 200, (r.status_code, r.headers, r.text)
        status = r.json()
        return status if status["daemon"]["proxy_pid"] != old_proxy else None

    status = wait_for(new_proxy_status, STOP_SECONDS, "the new proxy to answer", daemon.log)
    assert status["backend"]["state"] == "stopping", status
    assert time.monotonic() - started < STOP_SECONDS  # all of this before the SIGKILL
    for thread in threads:
        thread.join(60)
    first_at, first = results["first"]
    assert first.status_code == 409 and first.json()["error"]["code"] == "cancelled"
    assert first_at - started < STOP_SECONDS  # answered while the backend was stopping
    assert results["stop"][1].json() == {"stopped": "stubborn"}
    assert results["stop2"][1].json() == {"stopped": "stubborn"}
    assert results["second"][1].status_code == 200, results["second"][1].text
    assert daemon.backend()["model"] == "second"
    assert [p.pid for p in owned_backends(fake_home.runtime)] == [daemon.backend()["pid"]]
