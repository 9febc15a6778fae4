"""A chaos soak: random `kill -9`s of every llmctld process and of llama-server, interleaved
with switches, stops, forced stops and concurrent client traffic, against a real llama-server;
after every step the promises of docs/reliability.md are checked.

Black-box on purpose: it sees only what a user sees (processes and their titles, the HTTP API,
state.json), so it holds across rewrites of the daemon's internals.

Two soaks run: `fixed` always with FIXED_SEED (the same sequence in every CI run, so a change
that breaks it is seen as such, not as bad luck) and `random` with a fresh seed (new sequences
over time). Replay: the seed is printed and named in every failure; `LLMCTL_CHAOS_SEED=<seed>`
gives the `random` soak that seed (`pytest tests/integration/test_chaos.py -k "soak and random"`
runs the same sequence of steps again). Timing between processes is not replayed, so a race may need a few runs
with its seed. `LLMCTL_CHAOS_STEPS` and `LLMCTL_CHAOS_SECONDS` lengthen the soak on a developer's
machine; the defaults keep it within 3 minutes in CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from harness import Daemon, Home, owned_backends, wait_for

STEPS = int(os.environ.get("LLMCTL_CHAOS_STEPS", "60"))
SECONDS = float(os.environ.get("LLMCTL_CHAOS_SECONDS", "100"))  # wall-clock cap on the steps
REQUEST_BOUND = 45.0  # a client request may fail, but must end within this (connect 5 + read 30)
SETTLE = 15.0  # bound on every wait for the daemon to settle after a step
QUICK_DEATH = 30.0  # a worker dying this soon after its start counts toward llmctld giving up
COMMAND_BOUND = 90.0  # a switch or stop answers within this (a load is bounded at 60 s)
MODELS = ("tiny", "slow")
FIXED_SEED = 250_125  # the `fixed` soak's seed: any seed would do, as long as it stays put
WEIGHTS = {  # action -> relative frequency
    "kill_proxy": 2, "kill_lifecycle": 2, "kill_supervisor": 1.5, "kill_backend": 1.5,
    "switch": 2, "force_switch": 1, "stop": 1, "force_stop": 1,
    "kill_during_switch": 2.5, "kill_during_stop": 1, "just_traffic": 1,
}
VICTIMS = ("proxy", "lifecycle", "supervisor", "backend")


def http(method: str, url: str, timeout: float, **kw: Any) -> requests.Response:
    """One request on its own connection: a kept-alive one may belong to a killed worker."""
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, url, timeout=timeout,
                               headers={"Connection": "close"}, **kw)


class Traffic:
    """Chat requests, streaming and not, in background threads. Any outcome is allowed while
    processes are being killed, but every request must end within REQUEST_BOUND."""

    def __init__(self) -> None:
        self.running: list[tuple[threading.Thread, float, str]] = []
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()

    def start(self, url: str, stream: bool, max_tokens: int) -> None:
        what = f"{'streaming' if stream else 'non-streaming'} request to {url}"
        thread = threading.Thread(target=self._request, args=(url, stream, max_tokens),
                                  daemon=True, name=what)
        self.running.append((thread, time.monotonic(), what))
        thread.start()

    def _request(self, url: str, stream: bool, max_tokens: int) -> None:
        body = {"model": "local", "messages": [{"role": "user", "content": "hi"}],
                "stream": stream, "max_tokens": max_tokens}
        try:
            r = http("POST", url + "/v1/chat/completions", (5, 30), json=body, stream=stream)
            data = b"".join(r.iter_content(None))
            if r.status_code != 200:
                outcome = f"http {r.status_code}"
            elif stream and not data.rstrip().endswith(b"data: [DONE]"):
                outcome = "stream ended early"
            else:
                outcome = "ok"
        except requests.ConnectionError as e:
            outcome = "refused" if "refused" in str(e).lower() else "cut"
        except requests.RequestException:
            outcome = "cut"
        with self.lock:
            self.outcomes[outcome] += 1

    def join(self) -> None:
        for thread, started, what in self.running:
            thread.join(max(0.0, started + REQUEST_BOUND - time.monotonic()))
            assert not thread.is_alive(), f"a {what} hung for more than {REQUEST_BOUND}s"
        self.running.clear()


class BackendCensus:
    """Counts this runtime's llama-servers every 0.2 s in a thread, so two at once are seen
    even between the steps' checks."""

    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        self.step = "start"
        self.overlaps: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="census")
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.2):
            pids = [p.pid for p in owned_backends(self.runtime)]
            if len(pids) > 1:
                self.overlaps.append(f"llama-servers {pids} alive at once during {self.step}")

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


class Soak:
    """One soak: the daemon in use (replaced when a supervisor is killed), the seeded choice
    of steps, and the record of every llmctld process and log it has seen."""

    def __init__(self, home: Home, make_daemon: Callable[..., Daemon], seed: int) -> None:
        self.home = home
        self.make_daemon = make_daemon
        self.rng = random.Random(seed)
        self.traffic = Traffic()
        self.census = BackendCensus(home.runtime)
        self.history: list[str] = []
        self.known: dict[int, float] = {}  # every llmctld process seen: pid -> create time
        self.logs: list[Path] = []  # of every llmctld started
        self.quick_kills: Counter[str] = Counter()  # consecutive kills of young workers, by role
        self.daemon = self._start_daemon()

    # --- the daemon as a user sees it -----------------------------------------------------------

    def _start_daemon(self) -> Daemon:
        daemon = self.make_daemon()
        self._remember(daemon.pid)
        self.logs.append(daemon.log)
        return daemon

    def _remember(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self.known[pid] = psutil.Process(pid).create_time()

    def workers(self) -> dict[str, int]:
        try:
            workers = self.daemon.workers()
        except psutil.NoSuchProcess:  # the supervisor has exited
            return {}
        for pid in workers.values():
            self._remember(pid)
        return workers

    def status(self, timeout: float = 2) -> dict[str, Any]:
        r = http("GET", self.daemon.url + "/status", timeout)
        assert r.status_code == 200, f"/status answered {r.status_code}: {r.text}"
        return r.json()

    def answers(self) -> dict[str, Any] | None:
        try:
            return self.status()
        except (requests.RequestException, ValueError):
            return None

    def wait_status(self, condition: Callable[[dict[str, Any]], bool],
                    what: str) -> dict[str, Any]:
        return wait_for(lambda: (s := self.answers()) is not None and condition(s) and s,
                        SETTLE, what, self.daemon.log)

    # --- actions --------------------------------------------------------------------------------

    def step(self) -> str:
        if self.rng.random() < 0.6:
            for _ in range(self.rng.randint(1, 4)):
                self.traffic.start(self.daemon.url, self.rng.random() < 0.5,
                                   self.rng.choice((2, 6, 12)))  # the slow model is slow
        action = self.rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        self.census.step = f"step {len(self.history)} ({action})"
        detail = getattr(self, action)()
        return f"{action}: {detail}" if detail else action

    def just_traffic(self) -> str:
        return f"{len(self.traffic.running)} requests"

    def kill_proxy(self) -> str:
        return self.kill("proxy", settled=True)

    def kill_lifecycle(self) -> str:
        return self.kill("lifecycle", settled=True)

    def kill_supervisor(self) -> str:
        return self.kill("supervisor", settled=True)

    def kill_backend(self) -> str:
        return self.kill("backend", settled=True)

    def switch(self, force: bool = False) -> str:
        model = self.rng.choice(MODELS)
        r = http("POST", f"{self.daemon.url}/switch/{model}", COMMAND_BOUND,
                 params={"force": 1} if force else {})
        self.expect_answer(r, force)
        if r.status_code == 200:
            backend = self.status()["backend"]
            assert backend["state"] == "ready" and backend["model"] == model, \
                f"switch to {model} answered 200 but /status shows {backend}"
        return f"{model} -> {r.status_code}"

    def force_switch(self) -> str:
        return self.switch(force=True)

    def stop(self, force: bool = False) -> str:
        before = self.status()["backend"]
        r = http("POST", self.daemon.url + "/stop", COMMAND_BOUND,
                 params={"force": 1} if force else {})
        self.expect_answer(r, force)
        if r.status_code == 200 and before["pid"]:
            wait_for(lambda: before["pid"] not in [p.pid for p in owned_backends(
                self.home.runtime)], SETTLE, f"stopped llama-server {before['pid']} to exit",
                self.daemon.log)
        return f"-> {r.status_code}"

    def force_stop(self) -> str:
        return self.stop(force=True)

    def kill_during_switch(self) -> str:
        """A switch in a thread, and a kill right away (while the old model stops, or before
        the switch arrives) or once the load is under way."""
        current = self.status()["backend"]["model"]
        model = next((m for m in MODELS if m != current), "slow")
        force = self.rng.random() < 0.5
        at_once = self.rng.random() < 0.3
        answer: list[Any] = []
        thread = threading.Thread(target=lambda: answer.append(self._try(
            "POST", f"{self.daemon.url}/switch/{model}", {"force": 1} if force else {})),
            daemon=True)
        thread.start()
        if not at_once:
            wait_for(lambda: not thread.is_alive() or
                     (s := self.answers()) is not None and s["backend"]["state"] == "starting",
                     SETTLE, f"the load of {model} to begin", self.daemon.log)
        victim = self.rng.choice(VICTIMS)
        detail = self.kill(victim, settled=False)
        thread.join(COMMAND_BOUND + 5)
        assert not thread.is_alive(), f"the switch to {model} hung after {detail}"
        when = "at once" if at_once else "during the load"
        return f"{model} (force={force}) answered {answer[0]}; {when}: {detail}"

    def kill_during_stop(self) -> str:
        """A stop in a thread, and a kill right away (it lands before, during or after it)."""
        force = self.rng.random() < 0.5
        answer: list[Any] = []
        thread = threading.Thread(target=lambda: answer.append(self._try(
            "POST", self.daemon.url + "/stop", {"force": 1} if force else {})), daemon=True)
        thread.start()
        victim = self.rng.choice(VICTIMS)
        detail = self.kill(victim, settled=False)
        thread.join(COMMAND_BOUND + 5)
        assert not thread.is_alive(), f"the stop hung after {detail}"
        return f"force={force} answered {answer[0]}; {detail}"

    def _try(self, method: str, url: str, params: dict[str, Any]) -> str:
        try:
            r = http(method, url, COMMAND_BOUND, params=params)
        except requests.RequestException as e:
            return type(e).__name__
        return str(r.status_code)

    def expect_answer(self, r: requests.Response, force: bool) -> None:
        """No process is killed during a plain switch or stop: it succeeds, or (unforced) is
        refused as busy while the traffic runs; a worker still restarting from the previous
        step may answer a retryable 503."""
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") \
            else {}
        error = body.get("error") if isinstance(body, dict) else None
        ok = r.status_code == 200 or (
            r.status_code == 409 and not force and error and error["code"] == "busy") or (
            r.status_code == 503 and error and error.get("retryable"))
        assert ok, f"{r.request.method} {r.request.url} answered {r.status_code}: {r.text}"

    # --- kills ----------------------------------------------------------------------------------

    def kill(self, victim: str, settled: bool) -> str:
        """`kill -9` of one process. With `settled` (nothing else in progress but traffic),
        what docs/reliability.md promises for that failure is checked too."""
        before = self.answers()
        backend = before["backend"] if before else {}
        was_serving = settled and backend.get("state") == "ready" and \
            backend.get("pid") in [p.pid for p in owned_backends(self.home.runtime)]
        if victim == "backend":
            procs = owned_backends(self.home.runtime)
            if not procs:
                return "no llama-server to kill"
            pid = procs[0].pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.wait_status(lambda s: not (s["backend"]["pid"] == pid and
                                            s["backend"]["state"] in ("ready", "starting")),
                             f"/status to notice llama-server {pid} was killed")
            return f"killed llama-server {pid}"
        if victim == "supervisor":
            return self._kill_supervisor(backend if was_serving else None)
        pid = wait_for(lambda: self.workers().get(victim), SETTLE, f"a {victim} worker",
                       self.daemon.log)
        young = time.time() - self.known.get(pid, 0) < QUICK_DEATH
        self.quick_kills[victim] = self.quick_kills[victim] + 1 if young else 0
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        assert self.daemon.proc is not None
        wait_for(lambda: self.daemon.proc.poll() is not None or
                 self.workers().get(victim) not in (None, pid), SETTLE,
                 f"a new {victim} worker after killing {pid}", self.daemon.log)
        if self.daemon.proc.poll() is not None:
            return self._after_halt(victim, pid)
        if victim == "lifecycle" and was_serving:  # its successor adopts the llama-server
            self.wait_status(lambda s: s["backend"]["state"] == "ready", "adoption")
            now = self.status()["backend"]
            assert now["pid"] == backend["pid"], \
                f"the new lifecycle worker did not adopt llama-server {backend['pid']}: {now}"
        return f"killed {victim} worker {pid}"

    def _after_halt(self, victim: str, pid: int) -> str:
        """A worker that keeps dying soon after its start makes llmctld give up, non-zero
        (docs/reliability.md: after 3 boot failures or 8 quick deaths); a new llmctld then
        takes over what is left."""
        old = self.daemon
        assert old.proc is not None
        code = old.proc.returncode
        kills = self.quick_kills[victim]
        assert code != 0, f"llmctld exited with {code} after its {victim} worker was killed"
        assert kills >= 3, f"llmctld gave up after only {kills} quick deaths of its {victim} worker"
        self.quick_kills.clear()
        self._wait_gone([p for p in self.known if p != old.pid], "the halted llmctld's workers")
        self.daemon = self._start_daemon()
        return (f"killed {victim} worker {pid}: llmctld {old.pid} gave up after {kills} quick "
                f"deaths (exit {code}); started {self.daemon.pid}")

    def _kill_supervisor(self, serving: dict[str, Any] | None) -> str:
        """The workers notice the closed channel and exit, leaving llama-server running; a new
        llmctld on the same home adopts it (or stops it when it is not healthy)."""
        old = self.daemon
        workers = self.workers()
        assert old.proc is not None
        old.proc.kill()
        old.proc.wait(10)
        waited = self.rng.random() < 0.5  # start the successor at once, or once they are gone
        if waited:
            self._wait_gone(workers.values(), "the dead supervisor's workers to exit")
        self.daemon = self._start_daemon()
        self.quick_kills.clear()  # a new supervisor counts afresh
        self._wait_gone(workers.values(), "the dead supervisor's workers to exit")
        if serving is not None:
            self.wait_status(lambda s: s["backend"]["state"] != "starting", "adoption")
            now = self.status()["backend"]
            assert now["state"] == "ready" and now["pid"] == serving["pid"], \
                f"the new llmctld did not adopt llama-server {serving['pid']}: {now}"
        return (f"killed supervisor {old.pid} (workers {workers}), started {self.daemon.pid} "
                f"{'after' if waited else 'before'} the old workers exited")

    def _wait_gone(self, pids: Any, what: str) -> None:
        wait_for(lambda: not any(self._alive(p) for p in pids), SETTLE, what, self.daemon.log)

    def _alive(self, pid: int) -> bool:
        """Whether llmctld process `pid` still runs (not a recycled pid: its start time, when
        seen, or else its title must match)."""
        try:
            proc = psutil.Process(pid)
            same = proc.create_time() == self.known[pid] if pid in self.known else \
                "llmctld" in " ".join(proc.cmdline())
            return same and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    # --- invariants -----------------------------------------------------------------------------

    def check(self) -> None:
        """What must hold after every step, once its traffic has ended."""
        self.census.step += ", then its checks"
        self.traffic.join()
        assert not self.census.overlaps, self.census.overlaps
        backends = owned_backends(self.home.runtime)
        assert len(backends) <= 1, f"{len(backends)} llama-servers: {[p.pid for p in backends]}"
        self.wait_status(lambda s: True, "/status to answer")  # a proxy may be restarting
        self.status(timeout=2)  # then it answers within 2 s
        state = json.loads((self.home.runtime / "state.json").read_text())
        assert isinstance(state.get("backend"), dict), f"state.json without a backend: {state}"
        self.wait_status(lambda s: s["in_flight"] == 0, "in_flight to return to 0")
        # the one llama-server that runs is the one the daemon reports (none is leaked)
        self.wait_status(lambda s: {p.pid for p in owned_backends(self.home.runtime)} <=
                         {s["backend"]["pid"]}, "every llama-server to be the daemon's own")
        self.workers()

    def finish(self) -> None:
        """Stop everything: no llama-server and no llmctld process may remain."""
        self.traffic.join()
        r = http("POST", self.daemon.url + "/stop", COMMAND_BOUND, params={"force": 1})
        assert r.status_code == 200, f"the final forced stop answered {r.status_code}: {r.text}"
        wait_for(lambda: not owned_backends(self.home.runtime), SETTLE,
                 "no llama-server after the final stop", self.daemon.log)
        self.workers()
        code = self.daemon.stop()
        assert code == 0, f"llmctld exited with {code} on SIGTERM"
        self.census.stop()
        assert not self.census.overlaps, self.census.overlaps
        logged = {int(pid) for log in self.logs for pid in re.findall(
            r"started \w+ worker \(pid (\d+)\)", log.read_text())}
        wait_for(lambda: not [p for p in {*self.known, *logged} if self._alive(p)], SETTLE,
                 "every llmctld process to exit", self.daemon.log)
        assert not owned_backends(self.home.runtime)


@pytest.mark.parametrize("seeded", ["fixed", "random"])
def test_chaos_soak(home: Home, make_daemon, llama_server_binary: Path, tiny_gguf: Path,
                    slow_gguf: Path, seeded: str) -> None:
    seed = FIXED_SEED if seeded == "fixed" else \
        int(os.environ.get("LLMCTL_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"chaos soak: seed {seed} (replay with LLMCTL_CHAOS_SEED={seed})")
    home.use_real_server(llama_server_binary, stopTimeoutMs=5000, readyTimeoutMs=60_000)
    home.write_config(llama={"ctx_size": 512}, daemon={"default_model": "tiny"})
    home.add_model("tiny", tiny_gguf)
    home.add_model("slow", slow_gguf)
    started = time.monotonic()
    soak = Soak(home, make_daemon, seed)
    try:
        assert http("POST", soak.daemon.url + "/switch/tiny", COMMAND_BOUND).status_code == 200
        while len(soak.history) < STEPS and time.monotonic() - started < SECONDS:
            step_started = time.monotonic()
            soak.history.append(f"step {len(soak.history)}: ...")
            outcome = soak.step()
            soak.history[-1] = f"step {len(soak.history) - 1}: {outcome}"
            soak.check()
            soak.history[-1] += f" ({time.monotonic() - step_started:.1f}s)"
        soak.finish()
    except AssertionError as e:
        soak.census.stop()
        raise AssertionError(
            f"chaos seed {seed} failed at {soak.history[-1] if soak.history else 'setup'} "
            f"(replay with LLMCTL_CHAOS_SEED={seed})\n" + "\n".join(soak.history) +
            f"\ntraffic: {dict(soak.traffic.outcomes)}\n{e}") from None
    print("\n".join(soak.history))
    print(f"chaos soak: seed {seed}, {len(soak.history)} steps in "
          f"{time.monotonic() - started:.0f}s; traffic {dict(soak.traffic.outcomes)}")


def test_command_cut_by_the_supervisors_death_is_a_prompt_retryable_error(
        home: Home, make_daemon, llama_server_binary: Path, slow_gguf: Path) -> None:
    """`kill -9` of llmctld while a switch is loading: the proxy worker, orphaned, cannot get
    the answer any more, so the client should hear so at once, as a retryable 503 in JSON
    (like a command cut by a lifecycle worker's death), not wait for the drain to end."""
    home.use_real_server(llama_server_binary, readyTimeoutMs=60_000)
    home.write_config(llama={"ctx_size": 512})
    home.add_model("slow", slow_gguf)
    daemon = make_daemon()
    answer: list[requests.Response] = []
    thread = threading.Thread(target=lambda: answer.append(
        http("POST", daemon.url + "/switch/slow", COMMAND_BOUND)), daemon=True)
    thread.start()
    daemon.wait_state("starting")
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(10)
    cut = time.monotonic()
    thread.join(COMMAND_BOUND)
    waited = time.monotonic() - cut
    assert answer, "the switch got no answer"
    r = answer[0]
    assert r.status_code == 503 and r.json()["error"]["retryable"] is True, (r.status_code,
                                                                             r.text)
    assert waited < 5, f"the answer came {waited:.1f}s after the supervisor died"
