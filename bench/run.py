"""Run the benchmark: `.venv/bin/python -m bench [--quick]` (or `.venv/bin/python bench/run.py`).

Starts llmctld with tiny generated models (its llama-server is the one every path uses),
nginx when installed, runs the workloads, prints the tables and the PASS/MISS list, writes
bench/results/latest.json and docs/bench.png. Every process it starts is stopped on the way
out, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import `bench` from the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import control, hops, profiling, realmodel, report, rpcworkers, workloads  # noqa: E402
from bench.plan import FULL, QUICK, ROUTER_MODEL, Ctx  # noqa: E402
from bench.stack import (  # noqa: E402
    DAEMON_MODULE,
    DEFAULT_MODEL,
    MODELS,
    ROOT,
    BenchDaemon,
    Nginx,
    Ports,
    Reaper,
    logged_argv,
    make_home,
    write_models,
)

SECTIONS: dict[str, Callable[[Ctx], None]] = {
    "hops": hops.loopback_hops,
    "memory": workloads.memory_idle,
    "latency": workloads.latency,
    "throughput": workloads.throughput,
    "stream": workloads.streaming,
    "profile": profiling.profile_proxy,
    "cli": control.cli,
    "restart": control.restart,
    "switch": control.switch,
    "real": realmodel.real_model,
    "rpc": rpcworkers.rpc_workers,
}
# cold start runs first, before anything else is running
ALL = ["cold", *SECTIONS]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller samples (under ~2 min)")
    p.add_argument("--parallel", type=int, default=4,
                   help="llama-server -np (llama.parallel); each slot gets 512 tokens of "
                   "context (default 4)")
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    p.add_argument("--no-router", action="store_true",
                   help="skip the llama-server router-mode peer")
    p.add_argument("--only", help=f"comma-separated sections: {','.join(ALL)}")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench.png")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--daemon-module", default=DAEMON_MODULE, metavar="MODULE",
                   help="start llmctld as `python -m MODULE` (A/B-test a patched daemon; "
                   "default %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    only = [s.strip() for s in args.only.split(",")] if args.only else ALL
    unknown = set(only) - set(ALL)
    if unknown:
        print(f"unknown sections: {', '.join(sorted(unknown))} (choose from {', '.join(ALL)})",
              file=sys.stderr)
        return 2
    started = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    # SIGTERM/SIGHUP end the run like Ctrl-C does: through the finally below
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="llmctl-bench-"))
    reaper = Reaper()
    errors: dict[str, str] = {}
    ctx: Ctx | None = None
    try:
        say(f"{plan.name} run; work dir {work}")
        ctx = setup(work, plan, args, reaper, say)
        if "cold" in only:
            _section(ctx, "cold", control.cold_start, errors)
        start_stack(ctx, args)
        for name, fn in SECTIONS.items():
            if name in only:
                _section(ctx, name, fn, errors)
        if "memory" in only:
            _section(ctx, "memory (after the loads)", workloads.memory_after, errors)
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        errors["interrupted"] = "KeyboardInterrupt"
    finally:
        reaper.close()
    if ctx is None:
        return 1
    doc = finish(ctx, args, errors, time.monotonic() - started)
    if not args.keep and not errors:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"logs kept in {work}")
    return 1 if errors else 0 if doc else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _section(ctx: Ctx, name: str, fn: Callable[[Ctx], None], errors: dict[str, str]) -> None:
    ctx.say(f"--- {name}")
    try:
        fn(ctx)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one failing section must not cost the others
        errors[name] = f"{type(e).__name__}: {e}"
        ctx.say(f"{name} FAILED: {errors[name]}")
        traceback.print_exc()


def setup(work: Path, plan: Any, args: argparse.Namespace, reaper: Reaper,
          say: Callable[[str], None]) -> Ctx:
    ports = Ports()
    ggufs = write_models(work / "models")
    backend_port = ports.take()
    home = make_home(work / "home", ggufs, backend_port, args.parallel,
                     default_model=DEFAULT_MODEL)
    daemon = BenchDaemon(home, work / "llmctld.log", ports.take(), args.daemon_module)
    nginx = None
    if not args.no_nginx:
        nginx = Nginx(work / "nginx", ports.take(), backend_port, reaper)
        if nginx.binary is None:
            say("nginx is not installed: its columns are n/a "
                "(apt-get install -y nginx-light to add it)")
            nginx = None
    return Ctx(plan=plan, work=work, ports=ports, reaper=reaper, ggufs=ggufs,
               parallel=args.parallel, home=home, daemon=daemon, backend_port=backend_port,
               nginx=nginx, say=say, daemon_module=args.daemon_module)


def start_stack(ctx: Ctx, args: argparse.Namespace) -> None:
    ctx.reaper.track(ctx.daemon)
    ctx.daemon.start()
    for model in (*[m for m in MODELS if m != DEFAULT_MODEL], DEFAULT_MODEL):  # logs both argv
        r = ctx.daemon.switch(model)
        if r.status_code != 200:
            raise RuntimeError(f"switch {model}: {r.status_code} {r.text}")
    # llama-server's argv as llmctl logged it (before request logging can rotate it away)
    ctx.argv = {m: logged_argv(ctx.home, m) for m in MODELS}
    ctx.targets = {"direct": ctx.backend_port, "llmctld": ctx.daemon.port}
    if ctx.nginx is not None:
        ctx.nginx.start()
        ctx.targets["nginx"] = ctx.nginx.port
    proxy = f"nginx :{ctx.nginx.port}" if ctx.nginx is not None else "nginx n/a"
    if not args.no_router:
        from bench.router import Router, router_flags
        from bench.stack import llama_server_binary

        ctx.router = Router(ctx.work / "router", llama_server_binary(),
                            {m: ctx.ggufs[m] for m in MODELS}, router_flags(ctx.argv[ROUTER_MODEL]),
                            ctx.ports.take(), ctx.reaper)
        ctx.router.start()
        ctx.router.load(ROUTER_MODEL)
        child = ctx.router.child_port()
        assert child is not None
        ctx.targets["router_child"] = child
        ctx.targets["router"] = ctx.router.port
        proxy += f", router :{ctx.router.port} (child :{child})"
    ctx.say(f"stack: llama-server :{ctx.backend_port}, llmctld :{ctx.daemon.port}, {proxy}")


def _git() -> dict[str, Any]:
    """Which llmctl was measured: HEAD, and whether llmctl/ had uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()

    try:
        return {"head": git("rev-parse", "--short", "HEAD"),
                "llmctl_dirty": bool(git("status", "--porcelain", "--", "llmctl", "bin"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def _versions(ctx: Ctx) -> dict[str, Any]:
    from bench.stack import llama_server_binary

    out: dict[str, Any] = {"python": platform.python_version()}
    try:
        text = subprocess.run([str(llama_server_binary()), "--version"], capture_output=True,
                              text=True, timeout=30)
        line = next((ln for ln in (text.stdout + text.stderr).splitlines() if "version" in ln),
                    "")
        out["llama_server"] = line.strip()
    except (OSError, subprocess.SubprocessError):
        out["llama_server"] = None
    out["nginx"] = ctx.nginx.version if ctx.nginx is not None else None
    try:
        import gevent

        out["gevent"] = gevent.__version__
    except ImportError:
        pass
    return out


def finish(ctx: Ctx, args: argparse.Namespace, errors: dict[str, str], seconds: float,
           ) -> dict[str, Any]:
    r = ctx.results
    ts = report.targets(r)
    doc: dict[str, Any] = {
        "meta": {"mode": ctx.plan.name, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "seconds": round(seconds, 1), "cpus": os.cpu_count(),
                 "machine": platform.platform(), "parallel": ctx.parallel,
                 "ctx_size": 512 * ctx.parallel, "versions": _versions(ctx),
                 "plan": dataclasses.asdict(ctx.plan), "nginx": ctx.nginx is not None,
                 "daemon_module": ctx.daemon_module, "git": _git(),
                 "router": ctx.router.argv if ctx.router is not None else None,
                 "noise": ctx.meter.summary(), "errors": errors},
        "results": r,
        "targets": ts,
    }
    print()
    v = doc["meta"]["versions"]
    g = doc["meta"]["git"]
    print(f"llmctl bench, {ctx.plan.name} mode, {doc['meta']['date']}, {os.cpu_count()} CPUs, "
          f"{seconds:.0f} s; llmctl {g.get('head')}"
          f"{' + uncommitted changes' if g.get('llmctl_dirty') else ''}"
          f"{'' if ctx.daemon_module == DAEMON_MODULE else ' via ' + ctx.daemon_module}; "
          f"llama-server -np {ctx.parallel} -c {512 * ctx.parallel} "
          f"({v.get('llama_server')}); nginx {v.get('nginx') or 'n/a'}; "
          f"python {v['python']}, gevent {v.get('gevent')}")
    n = doc["meta"]["noise"]
    if n["rounds"]:
        print(f"noise: {n['rounds']} measured rounds, {n['disturbed']} disturbed (processes "
              f"outside the run above {n['threshold_cores']} cores); outside CPU median "
              f"{n['outside_cores_median']:.2f}, max {n['outside_cores_max']:.2f} cores")
    for part in (report.comparison(r), report.control_tables(r), report.targets_table(ts),
                 report.profile_text(r)):
        if part:
            print()
            print(part)
    if errors:
        print("\nsections that failed: " + "; ".join(f"{k}: {e}" for k, e in errors.items()))
    report.write_json(args.json, doc)
    print(f"\nwrote {args.json}")
    try:
        from bench.plot import plot

        plot(doc, args.plot)
        print(f"wrote {args.plot}")
    except ImportError:
        print("matplotlib is not installed: no plot (.venv/bin/pip install -e '.[bench]')")
    return doc


if __name__ == "__main__":
    sys.exit(main())
