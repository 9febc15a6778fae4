"""The streaming relay's cost per SSE chunk in CPU instructions: repeatable under load, where
timings on a shared 2-core machine are not.

`.venv/bin/python -m bench.relaycost [--code DIR] [--chunks N] [--interval S]` runs llmctld
under valgrind's callgrind (the whole daemon: forked workers are followed) in front of the
scripted fake llama-server, streams one generation of N chunks through it, and reports the
proxy worker's instructions (Ir) during that stream, per chunk. Counters are zeroed right
before the request and dumped right after it, so start-up is not counted.

- `--interval 0.02` (default): one event at a time, as a model generates them (each one
  arrives alone: what the relay costs per event when nothing can be coalesced).
- `--interval 0`: a flood; events queue up while the (slowed) relay works, so this shows
  what coalescing saves. Timing-dependent, so less repeatable.
- `--code DIR`: run the llmctl package found in DIR instead of this checkout's (for a before /
  after: `git archive <commit> llmctl | tar -x -C /tmp/before`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stack import ROOT, Home, Ports, wait_for


def _total_ir(out_file: Path) -> int:
    text = subprocess.run(["callgrind_annotate", str(out_file)], capture_output=True,
                          text=True, timeout=300).stdout
    m = re.search(r"([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", text) or \
        re.search(r"([\d,]+)\s+PROGRAM TOTALS", text)
    if not m:
        raise RuntimeError(f"no totals in callgrind_annotate output of {out_file}")
    return int(m.group(1).replace(",", ""))


CGCTL_C = """#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void cg_dump(void) { CALLGRIND_DUMP_STATS_AT("stream"); }
"""


def _build_helper(work: Path) -> Path:
    src, lib = work / "cgctl.c", work / "cgctl.so"
    src.write_text(CGCTL_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True,
                   timeout=120)
    return lib


def measure(code: Path, chunks: int, interval: float, work: Path, nonstream: bool = False,
            observe: bool = True) -> dict[str, float]:
    import requests

    ports = Ports()
    home = Home(work / "home", ports.take())
    home.use_fake_server(readyTimeoutMs=120_000, stopTimeoutMs=10_000)
    home.add_model("talker", script={"chunk_interval": interval, "stream_chunks": chunks})
    if not observe:
        home.write_config(observability={"metrics": False, "activity": False})
    log = work / "llmctld.log"
    port = ports.take()
    out = work / "cg"
    out.mkdir()
    env = {**home.env, "LLMCTL_CGCTL": str(_build_helper(work)),
           "PYTHONPATH": str(ROOT)}  # bench._cgdaemon; llmctl itself comes from `code` (cwd)
    # instrumentation off until the stream: start-up runs at valgrind's base speed, not 50x
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}/callgrind.out.%p",
            sys.executable, "-m", "bench._cgdaemon", "--port", str(port)]
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, env=env, stdout=f, stderr=f, stdin=subprocess.DEVNULL,
                                cwd=code)
    session = requests.Session()
    session.trust_env = False
    url = f"http://127.0.0.1:{port}"
    body = {"model": "local", "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "max_tokens": chunks}

    def chat(max_tokens: int) -> int:
        r = session.post(url + "/v1/chat/completions", json={**body, "max_tokens": max_tokens},
                         stream=True, timeout=600)
        assert r.status_code == 200, r.text
        return sum(1 for line in r.iter_lines() if line.startswith(b"data: "))

    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"llmctld exited:\n{log.read_text()[-3000:]}")
            try:
                return session.get(url + "/health", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_for(healthy, 900, "llmctld under valgrind", log)
        r = session.post(url + "/switch/talker", timeout=300)
        assert r.status_code == 200, r.text
        proxy = session.get(url + "/status", timeout=60).json()["daemon"]["proxy_pid"]
        chat(20)  # warm-up: pools, first-call paths
        os.kill(proxy, signal.SIGUSR1)  # instrumentation on
        chat(20)  # warm-up again, instrumented (code valgrind sees for the first time)
        os.kill(proxy, signal.SIGUSR1)  # zero
        time.sleep(0.5)
        t0 = time.perf_counter()
        if nonstream:  # `chunks` short non-streaming requests instead, on one connection
            for _ in range(chunks):
                r = session.post(url + "/v1/chat/completions", timeout=600,
                                 json={**body, "stream": False, "max_tokens": 4})
                assert r.status_code == 200, r.text
            events = chunks
        else:
            events = chat(chunks)
        seconds = time.perf_counter() - t0
        os.kill(proxy, signal.SIGWINCH)  # dump
        dumps = wait_for(lambda: sorted(out.glob(f"callgrind.out.{proxy}.*")), 120,
                         "the callgrind dump")
        time.sleep(1)  # let it finish writing
        ir = _total_ir(dumps[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"events": events, "seconds": seconds, "ir": ir, "ir_per_event": ir / events}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.relaycost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--code", type=Path, default=ROOT, help="directory holding llmctl/")
    p.add_argument("--chunks", type=int, default=1000)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--nonstream", action="store_true",
                   help="measure --chunks short non-streaming requests instead (per request)")
    p.add_argument("--no-observe", action="store_true",
                   help="with metrics and activity off (what they cost: run with and without)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    if not shutil.which("valgrind"):
        print("valgrind is not installed (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="llmctl-relaycost-"))
    try:
        res = measure(args.code.resolve(), args.chunks, args.interval, work, args.nonstream,
                      not args.no_observe)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res.update(code=str(args.code), interval=args.interval, observe=not args.no_observe)
    print(json.dumps(res))
    unit = "requests" if args.nonstream else "SSE events"
    print(f"{res['events']} {unit} in {res['seconds']:.1f} s: proxy worker "
          f"{res['ir'] / 1e6:.1f} M instructions, {res['ir_per_event']:.0f} per event, "
          f"{res['ir_per_event'] * 1000 / 1e6:.1f} M per 1,000 chunks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
