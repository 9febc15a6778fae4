"""One owner decides to load the default model (the lifecycle worker, on Ensure); a failed
default load is not retried by every request, only once something changed."""

from __future__ import annotations

import threading
import time

import requests

from harness import Daemon, Home, owned_backends


def chat(daemon: Daemon) -> requests.Response:
    return daemon.post("/v1/chat/completions", json={"messages": [], "max_tokens": 2})


def starts(daemon: Daemon, model: str) -> int:
    return daemon.log.read_text().count(f"INFO starting {model} ")


def test_failed_default_load_is_not_retried_until_the_config_changes(fake_home: Home,
                                                                      make_daemon) -> None:
    fake_home.add_model("doomed", script={"exit_during_load": {"after": 0.1, "code": 3}})
    fake_home.write_config(daemon={"default_model": "doomed"})
    daemon = make_daemon()
    first = chat(daemon)
    assert first.status_code == 503
    error = first.json()["error"]
    assert error["code"] == "default_model_failed"
    assert "loading the default model doomed failed" in error["message"]
    assert "exited with code 3" in error["message"]
    assert starts(daemon, "doomed") == 1
    again = chat(daemon)  # the same error at once, without another load
    assert again.status_code == 503 and "exited with code 3" in again.json()["error"]["message"]
    assert starts(daemon, "doomed") == 1
    time.sleep(0.01)  # ok: a distinct mtime for the edit below, not a synchronisation
    fake_home.add_model("doomed", script={"exit_during_load": {"after": 0.1, "code": 4}})
    edited = chat(daemon)  # the model's files changed: worth another try
    assert "exited with code 4" in edited.json()["error"]["message"]
    assert starts(daemon, "doomed") == 2


def test_explicit_switch_clears_the_failure(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("doomed", script={"exit_during_load": {"after": 0.1, "code": 3}})
    fake_home.add_model("good")
    fake_home.write_config(daemon={"default_model": "doomed"})
    daemon = make_daemon()
    assert chat(daemon).status_code == 503
    assert daemon.switch("good").status_code == 200
    assert chat(daemon).status_code == 200
    assert daemon.post("/stop").status_code == 200
    assert chat(daemon).status_code == 503  # stopped: the default is tried again, once
    assert starts(daemon, "doomed") == 2
    assert not owned_backends(fake_home.runtime)


def test_concurrent_requests_share_one_default_load(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("slow", script={"load_seconds": 1.0})
    fake_home.write_config(daemon={"default_model": "slow"})
    daemon = make_daemon()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(chat(daemon).status_code))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 4
    assert starts(daemon, "slow") == 1
