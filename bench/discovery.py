"""How long model discovery takes with hundreds of bare GGUFs: `python -m bench.discovery`.

Writes N header-only GGUFs (default 300; each carries a tokenizer vocabulary of V strings,
default 32,000 like Llama 2's, because skipping the vocabulary is what reading a header costs;
Qwen3's 151,000 costs about five times as much per file) into a temporary $LLMCTL_HOME/gguf/,
each a file of its own (one file linked many times is one model), then:

1. `discover()` in this process: the first scan (no header cache), a second scan (the cache in
   memory), and a scan by a fresh process (the cache file only, as a restarted worker sees it);
2. end to end: llmctld on that home (with the cache file the first scan wrote), `llmctl models`
   timed as a subprocess, first and then repeated (the daemon re-discovers on every `models`).

Prints a table and, with --json PATH, writes the numbers. The claim it checks: `llmctl models`
on 300 bare GGUFs answers in under a second after the first scan.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

from harness import Daemon, Home, Ports  # noqa: E402

TARGET_S = 1.0


def write_header(path: Path, vocab: int, name: str) -> None:
    """A GGUF header like a real model's: metadata plus a `tokenizer.ggml.tokens` string
    array (no tensors: discovery never reads weights)."""
    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    kvs = [string("general.architecture") + struct.pack("<I", 8) + string("qwen3"),
           string("general.name") + struct.pack("<I", 8) + string(name),
           string("general.file_type") + struct.pack("<II", 4, 15),
           string("qwen3.context_length") + struct.pack("<II", 4, 40960)]
    tokens = b"".join(string(f"tok{i}") for i in range(vocab))
    kvs.append(string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, vocab) + tokens)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))


SCAN_ONCE = """
import sys, time
from pathlib import Path
from llmctl.core.config import load_global
from llmctl.core.discovery import discover
home = Path(sys.argv[1])
t = time.perf_counter()
catalog = discover(home / "gguf", load_global(home / "config" / "default.yaml"),
                   home / "run" / "cache" / "gguf-headers.json")
print(time.perf_counter() - t, len(catalog.entries))
"""


def in_process(home: Path, runs: int) -> dict[str, float]:
    from llmctl.core.config import load_global
    from llmctl.core.discovery import discover

    cfg = load_global(home / "config" / "default.yaml")
    cache = home / "run" / "cache" / "gguf-headers.json"
    t = time.perf_counter()
    first = discover(home / "gguf", cfg, cache)
    first_s = time.perf_counter() - t
    again = []
    for _ in range(runs):
        t = time.perf_counter()
        discover(home / "gguf", cfg, cache)
        again.append(time.perf_counter() - t)
    fresh = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", SCAN_ONCE, str(home)], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
        fresh.append(float(out[0]))
    return {"models": len(first.entries), "first_scan_s": first_s,
            "cached_scan_s": statistics.median(again),
            "fresh_process_scan_s": statistics.median(fresh)}


def end_to_end(home: Home, runs: int) -> dict[str, float]:
    daemon = Daemon(home, home.root / "llmctld.log")
    try:
        daemon.start()  # inside the try: a daemon that starts too slowly is stopped too
        times = []
        for _ in range(runs + 1):
            t = time.perf_counter()
            r = daemon.cli("models", "--ids")
            times.append(time.perf_counter() - t)
            assert r.returncode == 0, r.stderr
        count = len(r.stdout.split())
        status, api = [], []  # the CLI's own start-up, and the daemon's answer alone
        for _ in range(runs):
            t = time.perf_counter()
            daemon.cli("status")
            status.append(time.perf_counter() - t)
            t = time.perf_counter()
            daemon.get("/models").raise_for_status()
            api.append(time.perf_counter() - t)
    finally:
        if daemon.proc is not None:
            daemon.stop()
    return {"cli_models": count, "cli_first_s": times[0],
            "cli_cached_s": statistics.median(times[1:]),
            "cli_status_s": statistics.median(status), "api_models_s": statistics.median(api)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.discovery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--vocab", type=int, default=32_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llmctl-bench-discovery-") as tmp:
        home = Home(Path(tmp) / "home", Ports().take())  # the tests' home: no starter
        root = home.root
        for i in range(args.files):
            sub = root / "gguf" / f"family-{i % 10}"
            sub.mkdir(exist_ok=True)
            write_header(sub / f"Model-{i:03d}-Q4_K_M.gguf", args.vocab, f"Bench Model {i}")
        size = (root / "gguf" / "family-0" / "Model-000-Q4_K_M.gguf").stat().st_size
        result = {"files": args.files, "vocab": args.vocab, "header_bytes": size,
                  **in_process(root, args.runs)}
        # the daemon starts with the cache file the first scan wrote: "after the first scan"
        result.update(end_to_end(home, args.runs))
    ok = result["cli_cached_s"] < TARGET_S
    assert result["models"] == result["cli_models"] == args.files, result
    print(f"discovery of {args.files} bare GGUFs ({size / 1e6:.1f} MB header each, "
          f"{args.vocab} tokens)")
    for key, label in (("first_scan_s", "first scan, no header cache"),
                       ("cached_scan_s", "scan again, same process"),
                       ("fresh_process_scan_s", "scan by a new process (cache file)"),
                       ("cli_first_s", "`llmctl models`, first of this daemon"),
                       ("cli_cached_s", "`llmctl models`, after the first"),
                       ("api_models_s", "  of which GET /models (the daemon's part)"),
                       ("cli_status_s", "  for scale: `llmctl status` (CLI start-up)")):
        print(f"  {label:<44} {result[key] * 1000:8.0f} ms")
    print(f"{'PASS' if ok else 'MISS'}: `llmctl models` after the first scan "
          f"{result['cli_cached_s']:.2f} s (target < {TARGET_S:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
