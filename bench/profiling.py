"""Where the proxy worker spends its CPU under the 16-client load (py-spy, sampling, without
pausing the process), and what `llmctl status` imports (python -X importtime)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.loadgen import chat_body
from bench.plan import CLIENTS, SEQ_TOKENS, STREAM_TOKENS, STREAMS, Ctx
from bench.stack import ROOT, proxy_pid

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
TOP = 15
RATE = 200  # samples per second


def _py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile_proxy(ctx: Ctx) -> None:
    """py-spy on the proxy worker under two loads: 16 clients of short non-streaming requests,
    and 4 concurrent long streams (the chunk flood)."""
    out: dict[str, Any] = {}
    ctx.results["profile"] = out
    pyspy = _py_spy()
    if pyspy is None:
        out["skipped"] = "py-spy is not installed (.venv/bin/pip install py-spy)"
        ctx.say("profile: skipped (" + out["skipped"] + ")")
    else:
        seconds = max(1, int(ctx.plan.profile_s))
        loads = {"16 clients, non-streaming": (chat_body(SEQ_TOKENS, False), CLIENTS),
                 f"{STREAMS} streams x{STREAM_TOKENS} tokens": (
                     chat_body(STREAM_TOKENS, True), STREAMS)}
        out["runs"] = {}
        for i, (label, (body, clients)) in enumerate(loads.items()):
            run = _record(ctx, pyspy, i, body, clients, seconds)
            out["runs"][label] = run
            if "error" in run:
                ctx.say(f"profile ({label}): py-spy failed: {run['error']}")
                continue
            top = run["self_by_line"][:3]
            ctx.say(f"profile ({label}): {run['samples']} samples, proxy busy "
                    f"~{run['cpu_busy']:.0%}; top: " +
                    "; ".join(f"{t['where']} {t['pct']:.1f}%" for t in top))
    out["cli_imports"] = cli_imports(ctx)


def _record(ctx: Ctx, pyspy: str, i: int, body: bytes, clients: int, seconds: int,
            ) -> dict[str, Any]:
    pid = proxy_pid(ctx.daemon)
    if pid is None:
        return {"error": "no proxy worker"}
    raw = ctx.work / f"py-spy-{i}.txt"
    log_path = ctx.work / f"py-spy-{i}.log"
    with open(log_path, "wb") as log:
        proc = ctx.reaper.popen("py-spy", [pyspy, "record", "--pid", str(pid), "--duration",
                                           str(seconds), "--rate", str(RATE), "--format", "raw",
                                           "--output", str(raw), "--nonblocking"],
                                stdout=log, stderr=subprocess.STDOUT)
    load = loadgen.concurrent(ctx.targets["llmctld"], body, clients, seconds + 1.0)
    try:
        proc.wait(seconds + 30)
    finally:
        ctx.reaper.stop(proc)
    if not raw.exists():
        return {"error": log_path.read_text()[-1000:]}
    run = parse_raw(raw.read_text())
    run.update(seconds=seconds, load_rps=load.rate, load_chunks_per_s=load.events / load.elapsed,
               cpu_busy=run["samples"] / (RATE * seconds))
    return run


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker.startswith("/lib") else tail
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def parse_raw(text: str) -> dict[str, Any]:
    """py-spy's raw (collapsed stacks) output: self time per line and per function, inclusive
    time per function, self time per file."""
    self_line: Counter[str] = Counter()
    self_func: Counter[str] = Counter()
    incl_func: Counter[str] = Counter()
    self_file: Counter[str] = Counter()
    total = 0
    for row in text.splitlines():
        stack, _, count_text = row.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            m = FRAME.match(frame.strip())
            if m:
                frames.append((m["func"], _short(m["file"]), m["line"] or "?"))
            else:
                frames.append((frame.strip(), "?", "?"))
        func, file, line = frames[-1]
        self_line[f"{file}:{line} {func}"] += count
        self_func[f"{file} {func}"] += count
        self_file[file] += count
        for key in {f"{f} {fn}" for fn, f, _ in frames}:
            incl_func[key] += count

    def top(counter: Counter[str], n: int = TOP) -> list[dict[str, Any]]:
        return [{"where": k, "samples": v, "pct": 100 * v / total if total else 0.0}
                for k, v in counter.most_common(n)]

    return {"samples": total, "self_by_line": top(self_line), "self_by_function":
            top(self_func), "inclusive_by_function": top(incl_func, 25),
            "self_by_file": top(self_file, 12)}


def cli_imports(ctx: Ctx, top: int = 10) -> list[dict[str, Any]]:
    """The slowest top-level imports of `llmctl status` (cumulative µs)."""
    code = "import sys; from llmctl.cli.main import main; sys.exit(main(['status']))"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=ctx.daemon.env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    rows: list[dict[str, Any]] = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m[3]) <= 1:  # top level only
            rows.append({"module": m[4], "self_us": int(m[1]), "cumulative_us": int(m[2])})
    rows.sort(key=lambda r: -r["cumulative_us"])
    return rows[:top]
