"""The daemon-side workloads: cold start, the CLI, proxy-worker restarts under load, switch
time and the default-model-on-first-request path, each against a baseline measured in the same
run."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.loadgen import ClientThreads, Conn, HTTPError, chat_body, median, summary_ms
from bench.plan import ROUTER_MODEL, SEQ_TOKENS, Ctx
from bench.stack import (
    DEFAULT_MODEL,
    MODELS,
    ROOT,
    logged_argv,
    make_home,
    poll_ready,
    proxy_pid,
    wait_for,
)

LLMCTL = ROOT / "bin" / "llmctl"


def _ms(seconds: list[float]) -> dict[str, Any]:
    return summary_ms(seconds)


# --- 8. cold start ----------------------------------------------------------------------------


def import_floor(ctx: Ctx) -> float:
    """One `python -c "import requests"` (the floor of any Python program that speaks HTTP
    with the usual library), seconds; each run kept in results["floor"]."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import requests"], check=True, cwd=ROOT,
                   stdin=subprocess.DEVNULL, timeout=60)
    elapsed = time.perf_counter() - t0
    runs = ctx.results.setdefault("floor", {"runs_ms": []})["runs_ms"]
    runs.append(elapsed * 1000)
    ctx.results["floor"]["import_requests_ms"] = median(runs)
    return elapsed


def cold_start(ctx: Ctx) -> None:
    """Spawn llmctld (fresh home, nothing loaded) and poll /health every 5 ms until 200; each
    round after one `import requests`, the floor the targets are relative to."""
    home = make_home(ctx.work / "cold", ctx.ggufs, ctx.ports.take(), ctx.parallel)
    times = []
    for _ in range(ctx.plan.cold_n):
        import_floor(ctx)
        port = ctx.ports.take()
        with open(ctx.work / "cold" / "llmctld.log", "ab") as log:
            t0 = time.perf_counter()
            proc = ctx.reaper.popen(
                "llmctld (cold start)", [sys.executable, "-m", ctx.daemon_module, "--port",
                                         str(port)],
                env=home.env, stdout=log, stderr=log, cwd=ROOT, start_new_session=False)
        try:
            times.append(poll_ready(port, 20, proc=proc) - t0)
        finally:
            ctx.reaper.stop(proc, timeout=20)
    ctx.results["cold_start"] = {"ms": _ms(times), "runs": [t * 1000 for t in times]}
    floor = ctx.results["floor"]["import_requests_ms"]
    ctx.say(f"cold start to /health 200: median {median(times) * 1000:.0f} ms; import requests "
            f"{floor:.0f} ms ({median(times) * 1000 / floor:.2f}x)")


# --- 6. CLI -----------------------------------------------------------------------------------


def cli(ctx: Ctx) -> None:
    """`bin/llmctl status` against the floor of any requests-based CLI."""
    py = sys.executable
    commands = {
        "llmctl_status": f"{LLMCTL} status",
        "venv_llmctl_status": f"{Path(py).parent / 'llmctl'} status",
        "import_requests": f'{py} -c "import requests"',
        "python_startup": f"{py} -c pass",
    }
    if not (Path(py).parent / "llmctl").exists():
        del commands["venv_llmctl_status"]
    env = {**ctx.daemon.env, "NO_COLOR": "1"}
    hyperfine = shutil.which("hyperfine")
    runs = ctx.plan.cli_runs
    out: dict[str, Any] = {"tool": "hyperfine" if hyperfine else "own timing", "runs": runs,
                           "commands": commands}
    if hyperfine:
        export = ctx.work / "hyperfine.json"
        argv = [hyperfine, "-N", "--warmup", "3", "--runs", str(runs), "--export-json",
                str(export), "--style", "none"]
        for name, cmd in commands.items():
            argv += ["--command-name", name, cmd]
        subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       timeout=600)
        for res in json.loads(export.read_text())["results"]:
            out[res["command"]] = {"median_ms": res["median"] * 1000,
                                   "mean_ms": res["mean"] * 1000,
                                   "stddev_ms": (res.get("stddev") or 0) * 1000,
                                   "min_ms": res["min"] * 1000}
    else:
        import shlex

        for name, cmd in commands.items():
            argv = shlex.split(cmd)
            times = []
            for i in range(runs + 3):
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                               timeout=60)
                if i >= 3:
                    times.append(time.perf_counter() - t0)
            out[name] = {"median_ms": median(times) * 1000, "mean_ms": sum(times) / runs * 1000,
                         "min_ms": min(times) * 1000}
    out["ratio"] = out["llmctl_status"]["median_ms"] / out["import_requests"]["median_ms"]
    ctx.results["cli"] = out
    ctx.say(f"llmctl status: {out['llmctl_status']['median_ms']:.0f} ms vs import requests "
            f"{out['import_requests']['median_ms']:.0f} ms ({out['ratio']:.2f}x)")


# --- 5. proxy worker restart ------------------------------------------------------------------


@dataclass
class Outcome:
    t0: float
    t1: float
    kind: str  # ok | refused | failed | reset (a reused keep-alive connection closed on us)
    client: str  # keepalive | fresh
    detail: str = ""


class SteadyLoop(ClientThreads):
    """A steady request loop against llmctld: `keepalive` threads on kept-alive connections
    and `fresh` threads opening one connection per request, 5 ms apart."""

    PAUSE = 0.005

    def __init__(self, port: int, keepalive: int = 2, fresh: int = 2):
        super().__init__()
        self.port = port
        self.body = chat_body(SEQ_TOKENS, False)
        self.outcomes: list[Outcome] = []
        self.spawn(self._run, True, n=keepalive)
        self.spawn(self._run, False, n=fresh)

    def _run(self, keepalive: bool) -> None:
        conn = Conn(self.port, timeout=30, retry_stale=False)
        label = "keepalive" if keepalive else "fresh"
        while not self._stop.is_set():
            t0 = time.perf_counter()
            kind, detail = "ok", ""
            try:
                try:
                    conn.connect()
                except ConnectionRefusedError as e:
                    kind, detail = "refused", str(e)
                else:
                    conn.chat(self.body)
            except (OSError, http.client.HTTPException, HTTPError) as e:
                stale = getattr(e, "reused", False) and getattr(e, "stage", "") == "head" and \
                    isinstance(e, Conn.STALE)
                kind, detail = ("reset" if stale else "failed"), f"{type(e).__name__}: {e}"
            with self._lock:
                self.outcomes.append(Outcome(t0, time.perf_counter(), kind, label, detail))
            if not keepalive or kind != "ok":
                conn.close()
            self._stop.wait(self.PAUSE)
        conn.close()


def _max_gap(ends: list[float], start: float, stop: float) -> tuple[float, float]:
    """The longest stretch in [start, stop] without a successful completion: (length, where
    it begins)."""
    inside = [t for t in ends if start <= t <= stop]
    if not inside:
        return stop - start, start
    points = [start, *inside]
    return max(((b - a, a) for a, b in zip(points, points[1:], strict=False)),
               default=(0.0, start))


def restart(ctx: Ctx) -> None:
    """`plan.kills` kill -9 rounds and `plan.graceful` graceful ones. The supervisor backs off
    a worker that dies within 30 s of its start when the one before it did too, so every kill
    waits until the proxy worker is 31 s old: the gap measured is a first crash's."""
    plan = ctx.plan
    order = ["kill", *(["graceful"] * plan.graceful)] if plan.kills else ["graceful"] * \
        plan.graceful
    order += ["kill"] * max(0, plan.kills - 1)
    events = []
    for kind in order:
        if kind == "kill":
            pid = proxy_pid(ctx.daemon)
            assert pid is not None
            age = time.time() - psutil.Process(pid).create_time()
            if age < 31:
                ctx.say(f"  waiting {31 - age:.0f} s for the proxy worker to be 30 s old "
                        "(supervisor crash backoff)")
                time.sleep(31 - age)
        import_floor(ctx)
        events.append(_restart_once(ctx, kind))
        e = events[-1]
        ctx.say(f"restart ({kind}): gap {e['gap_ms']:.0f} ms (normal {e['baseline_gap_ms']:.0f}"
                f" ms), refused {e['refused']}, failed {e['failed']}, "
                f"keep-alive resets {e['resets']}")
    out: dict[str, Any] = {"events": events}
    for kind in ("kill", "graceful"):
        gaps = [e["gap_ms"] for e in events if e["kind"] == kind]
        if gaps:
            out[f"{kind}_gap_ms"] = {"p50": median(gaps), "min": min(gaps), "max": max(gaps),
                                     "n": len(gaps)}
    ctx.results["restart"] = out
    floor = ctx.results["floor"]["import_requests_ms"]
    if "kill_gap_ms" in out:
        ctx.say(f"kill -9 gap: median {out['kill_gap_ms']['p50']:.0f} ms over "
                f"{len(events)} rounds; import requests {floor:.0f} ms "
                f"({out['kill_gap_ms']['p50'] / floor:.2f}x)")


def _restart_once(ctx: Ctx, kind: str) -> dict[str, Any]:
    daemon = ctx.daemon
    old = proxy_pid(daemon)
    assert old is not None
    # a graceful restart leaves the old worker draining its kept-alive connections for up to
    # DRAIN_SECONDS (10 s): watch past that
    window = 12.5 if kind == "graceful" else 3.0
    with SteadyLoop(daemon.port) as loop:
        time.sleep(1.5)
        t_trigger = time.perf_counter()
        if kind == "graceful":
            conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            conn.request("POST", "/restart-proxy")
            status = conn.getresponse().status
            conn.close()
            assert status == 202, status
        else:
            os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (p := proxy_pid(daemon)) not in (None, old) and p, 20,
                       "a new proxy worker", daemon.log)
        t_new = time.perf_counter()
        time.sleep(window)
    outcomes = [o for o in loop.outcomes if o.t1 >= t_trigger - 1.0]
    for o in outcomes:  # dropped while in flight at a kill: it died inside the old worker
        if kind == "kill" and o.kind == "reset" and o.t0 < t_trigger:
            o.kind = "failed"
    ends = sorted(o.t1 for o in loop.outcomes if o.kind == "ok")
    after = [o for o in outcomes if o.t1 >= t_trigger]
    bad = [o for o in after if o.kind != "ok"]
    gap, gap_at = _max_gap(ends, t_trigger, t_trigger + window)
    return {
        "kind": kind, "old_pid": old, "new_pid": new,
        "new_worker_ms": (t_new - t_trigger) * 1000,
        "gap_ms": gap * 1000, "gap_at_s": round(gap_at - t_trigger, 3),
        "baseline_gap_ms": _max_gap(ends, t_trigger - 1.0, t_trigger)[0] * 1000,
        "requests": len(outcomes),
        "ok": sum(o.kind == "ok" for o in outcomes),
        "refused": sum(o.kind == "refused" for o in outcomes),
        "failed": sum(o.kind == "failed" for o in outcomes),
        "resets": sum(o.kind == "reset" for o in outcomes),
        "problems": [{"at_s": round(o.t1 - t_trigger, 3), "kind": o.kind, "client": o.client,
                      "detail": o.detail[:120]} for o in bad][:20],
        "window_s": window,
    }


# --- 4. switch time and the default model on the first request --------------------------------


def _api(ctx: Ctx, method: str, path: str, timeout: float = 60) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", ctx.daemon.port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status} {data}")
        return data
    finally:
        conn.close()


def _api_switch(ctx: Ctx, model: str) -> float:
    t0 = time.perf_counter()
    data = _api(ctx, "POST", f"/switch/{model}")
    elapsed = time.perf_counter() - t0
    if data.get("already_active") or data.get("state") != "ready":
        raise RuntimeError(f"switch to {model}: unexpected reply {data}")
    return elapsed


def _api_switch_stream(ctx: Ctx, model: str) -> float:
    """POST /switch/<model>?stream=1 (what the CLI calls), read to the last NDJSON event."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", ctx.daemon.port, timeout=60)
    try:
        conn.request("POST", f"/switch/{model}?stream=1")
        resp = conn.getresponse()
        lines = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    finally:
        conn.close()
    elapsed = time.perf_counter() - t0
    if resp.status != 200 or not lines or lines[-1].get("event") != "ready" or \
            lines[-1].get("already_active"):
        raise RuntimeError(f"switch {model} (stream): HTTP {resp.status} {lines[-1:]}")
    return elapsed


def _cli_switch(ctx: Ctx, model: str) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([str(LLMCTL), "switch", model], env=ctx.daemon.env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0 or "already active" in out.stdout:
        raise RuntimeError(f"llmctl switch {model}: exit {out.returncode}: "
                           f"{out.stdout} {out.stderr}")
    return elapsed


def _stop_model(ctx: Ctx) -> None:
    _api(ctx, "POST", "/stop")
    wait_for(lambda: ctx.daemon.backend()["state"] == "stopped", 30, "backend stopped",
             ctx.daemon.log)


def _direct(ctx: Ctx, argv: list[str], request: bytes | None = None) -> tuple[float, float]:
    """Spawn llama-server with llmctl's argv, poll /health every 5 ms (optionally send one
    request on a fresh connection): seconds to ready (or to that response), seconds to stop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_ARG_", "LLMCTL_"))}
    with open(ctx.work / "direct-llama-server.log", "ab") as log:
        t0 = time.perf_counter()
        proc = ctx.reaper.popen("llama-server (direct)", argv, stdout=log, stderr=log, env=env)
    try:
        ready = poll_ready(ctx.backend_port, 60, proc=proc) - t0
        if request is not None:
            conn = Conn(ctx.backend_port)
            conn.chat(request)
            ready = time.perf_counter() - t0
            conn.close()
    finally:
        stop = ctx.reaper.stop(proc, timeout=15)
    return ready, stop if stop is not None else float("nan")


def switch(ctx: Ctx) -> None:
    plan = ctx.plan
    argv = ctx.argv or {m: logged_argv(ctx.home, m) for m in MODELS}
    rows: dict[str, list[float]] = {k: [] for k in (
        "direct_ready", "direct_stop", "api_cold", "api_stream_cold", "cli_cold", "api_hot",
        "cli_hot")}
    _stop_model(ctx)
    for i in range(plan.switch_n):
        model, other = MODELS[i % 2], MODELS[(i + 1) % 2]
        ready, stop = _direct(ctx, argv[model])
        rows["direct_ready"].append(ready)
        rows["direct_stop"].append(stop)
        rows["api_cold"].append(_api_switch(ctx, model))  # from nothing loaded
        _stop_model(ctx)
        rows["api_stream_cold"].append(_api_switch_stream(ctx, model))
        _stop_model(ctx)
        rows["cli_cold"].append(_cli_switch(ctx, model))
        rows["api_hot"].append(_api_switch(ctx, other))  # stop one model, start the other
        rows["cli_hot"].append(_cli_switch(ctx, model))
        _stop_model(ctx)
    ready_ms = median(rows["direct_ready"]) * 1000
    stop_ms = median(rows["direct_stop"]) * 1000
    out: dict[str, Any] = {k: _ms(v) for k, v in rows.items()}
    out["overhead_ms"] = {
        "api_cold": median(rows["api_cold"]) * 1000 - ready_ms,
        "api_stream_cold": median(rows["api_stream_cold"]) * 1000 - ready_ms,
        "cli_cold": median(rows["cli_cold"]) * 1000 - ready_ms,
        "api_hot": median(rows["api_hot"]) * 1000 - ready_ms - stop_ms,
        "cli_hot": median(rows["cli_hot"]) * 1000 - ready_ms - stop_ms,
    }
    out["argv"] = argv[DEFAULT_MODEL]
    # the default model, loaded by the first /v1 request
    body = chat_body(SEQ_TOKENS, False)
    base, through = [], []
    for _ in range(plan.default_n):
        base.append(_direct(ctx, argv[DEFAULT_MODEL], request=body)[0])
        conn = Conn(ctx.daemon.port, timeout=120)
        through.append(conn.chat(body).total)
        conn.close()
        _stop_model(ctx)
    out["default_direct"] = _ms(base)
    out["default_llmctld"] = _ms(through)
    out["overhead_ms"]["default"] = (median(through) - median(base)) * 1000
    ctx.results["switch"] = out
    o = out["overhead_ms"]
    ctx.say(f"switch: llama-server spawn->ready {ready_ms:.0f} ms, stop {stop_ms:.0f} ms; "
            f"overhead API {o['api_cold']:.0f} ms, CLI {o['cli_cold']:.0f} ms, "
            f"A->B API {o['api_hot']:.0f} ms, default-on-first-request {o['default']:.0f} ms")
    _api_switch(ctx, DEFAULT_MODEL)  # leave the model loaded
    if ctx.router is not None:  # the peer: A -> B in llama-server's router mode
        from bench import router

        out["router"] = router.switch(ctx.router, MODELS, plan.switch_n, ctx.ports.take(),
                                      ctx.reaper, ctx.work)
        ctx.router.load(ROUTER_MODEL)  # where the other sections expect it
        ctx.targets["router_child"] = wait_for(ctx.router.child_port, 30, "the router child")
        ro = out["router"]["overhead_ms"]
        ctx.say(f"switch (router): A->B by request {ro['request']:+.0f} ms, by "
                f"/models/unload+load {ro['api']:+.0f} ms over its bare child")

