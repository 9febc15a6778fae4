"""A big catalogue: listing time, and the longest stall of a stream meanwhile.
`python -m bench.catalog [--models 100,300,1000] [--listings 10] [--json PATH]`.

For each size N: a temporary home with N configured models (a directory each, with a
config.yaml naming an alias and a small header-only GGUF) plus one model served by the
scripted fake llama-server that streams a chunk every 10 ms; llmctld on it. Then, while a
stream runs through llmctld:

1. `unchanged`: GET /models again and again on an unchanged tree;
2. `edited`: before each GET /models one config.yaml is rewritten (another alias), so every
   listing must discover the catalog afresh, and the listing must show the edit.

For each: the median and the longest listing, and the longest gap between two chunks of the
concurrent stream. The baseline, measured in the same run on the same daemon: the longest gap
of the same stream while nothing is listed. A stall ratio near 1 means the listing did not
hold up the stream; the old code did the whole discovery on the proxy's event loop, so every
stream waited for it.

The claim it checks: at 1,000 models a listing of an unchanged tree takes milliseconds
(TARGET_LIST_S) and no listing stalls a stream by more than STALL_MARGIN_S beyond the baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

from bench.discovery import write_header  # noqa: E402

from harness import Daemon, Home, Ports  # noqa: E402

TARGET_LIST_S = 0.050  # a listing of 1,000 unchanged models
STALL_MARGIN_S = 0.050  # longest chunk gap beyond the baseline's while listing
CHUNK_INTERVAL = 0.01
RACY_WAIT = 2.5  # backend/catalog_memo.py does not trust paths younger than 2 s


def make_home(root: Path, models: int) -> Home:
    home = Home(root, Ports().take())
    home.use_fake_server(readyTimeoutMs=60_000)
    home.add_model("stream", script={"chunk_interval": CHUNK_INTERVAL,
                                     "stream_chunks": 100_000})
    for i in range(models):
        d = home.models_dir / f"family-{i % 20}" / f"model-{i:04d}"
        d.mkdir(parents=True)
        write_header(d / "model.gguf", 64, f"Bench Model {i}")
        write_config(d, i, 0)
    # the header cache file a first scan writes (as after any earlier run of llmctld): the
    # daemon then starts in seconds, not after reading a thousand headers
    from llmctl.core.config import load_global
    from llmctl.core.discovery import discover

    discover(home.models_dir, load_global(home.root / "config" / "default.yaml"),
             home.runtime / "cache" / "gguf-headers.json")
    return home


def write_config(d: Path, i: int, edit: int) -> None:
    (d / "config.yaml").write_text(yaml.safe_dump({
        "id": f"model-{i:04d}", "name": f"Bench Model {i}", "model_file": "model.gguf",
        "aliases": [f"alias-{i:04d}-{edit}"], "llama": {"ctx_size": 2048}}))


STREAM_READER = """
import sys, time, requests
r = requests.post(sys.argv[1] + "/v1/chat/completions", stream=True, timeout=60, json={
    "model": "local", "stream": True, "max_tokens": 100000,
    "messages": [{"role": "user", "content": "hi"}]})
for _ in r.iter_content(chunk_size=None):
    print(time.monotonic(), flush=True)
"""


class Stream:
    """A streamed completion through llmctld, read by a process of its own (so this one's
    work, e.g. reading a 2 MB listing, never delays a reading): when each chunk arrived."""

    def __init__(self, daemon: Daemon):
        self.arrivals: list[float] = []
        self.proc = subprocess.Popen([sys.executable, "-c", STREAM_READER, daemon.url],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.arrivals.append(float(line))

    def longest_gap(self, start: float, end: float) -> float:
        deadline = time.monotonic() + 5  # the reader's lines for `end` are still on the way
        while (not self.arrivals or self.arrivals[-1] < end) and time.monotonic() < deadline:
            time.sleep(0.01)
        times = [t for t in self.arrivals if start <= t <= end]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=end - start)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.thread.join(10)


def listing(daemon: Daemon, expect: str | None = None) -> float:
    t = time.monotonic()
    r = requests.get(daemon.url + "/models", timeout=600)
    took = time.monotonic() - t
    r.raise_for_status()
    if expect is not None:
        assert expect.encode() in r.content, f"the listing does not show the edit {expect}"
    return took


def measure(n: int, listings: int, say: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmctl-bench-catalog-") as tmp:
        home = make_home(Path(tmp) / "home", n)
        daemon = Daemon(home, Path(tmp) / "llmctld.log")
        daemon.start()
        try:
            assert daemon.switch("stream").status_code == 200
            first = listing(daemon)  # the first scan: every header read
            time.sleep(RACY_WAIT)  # let the tree age past the memo's racy window
            stream = Stream(daemon)
            time.sleep(0.5)
            t0 = time.monotonic()
            time.sleep(1.5)  # the baseline: the stream alone
            baseline = stream.longest_gap(t0, time.monotonic())
            out: dict[str, Any] = {"models": n, "first_listing_s": first,
                                   "baseline_gap_s": baseline}
            for mode in ("unchanged", "edited"):
                times = []
                t0 = time.monotonic()
                for k in range(listings):
                    expect = None
                    if mode == "edited":
                        i = k % n
                        write_config(home.models_dir / f"family-{i % 20}" / f"model-{i:04d}",
                                     i, k + 1)
                        expect = f"alias-{i:04d}-{k + 1}"
                    times.append(listing(daemon, expect))
                gap = stream.longest_gap(t0, time.monotonic())
                out[mode] = {"listing_median_s": statistics.median(times),
                             "listing_max_s": max(times), "stream_gap_s": gap,
                             "stall_ratio": gap / baseline if baseline else None}
                say(f"  {n} models, {mode}: listing median {statistics.median(times) * 1e3:.1f} "
                    f"ms, longest {max(times) * 1e3:.1f} ms; stream's longest gap "
                    f"{gap * 1e3:.1f} ms (baseline {baseline * 1e3:.1f} ms)")
            stream.close()
        finally:
            if daemon.proc is not None:
                daemon.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.catalog", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="100,300,1000",
                   help="comma-separated catalogue sizes (default %(default)s)")
    p.add_argument("--listings", type=int, default=10, help="listings per mode (default 10)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.models.split(",") if x.strip()]

    def say(msg: str) -> None:
        print(msg, flush=True)

    results = [measure(n, args.listings, say) for n in sizes]
    print(f"\n{'models':>7} {'mode':<10} {'list median':>12} {'list max':>10} "
          f"{'stream gap':>11} {'baseline':>9} {'ratio':>6}")
    for r in results:
        for mode in ("unchanged", "edited"):
            m = r[mode]
            print(f"{r['models']:>7} {mode:<10} {m['listing_median_s'] * 1e3:>10.1f}ms "
                  f"{m['listing_max_s'] * 1e3:>8.1f}ms {m['stream_gap_s'] * 1e3:>9.1f}ms "
                  f"{r['baseline_gap_s'] * 1e3:>7.1f}ms {m['stall_ratio'] or 0:>6.1f}")
    ok = True
    for r in results:
        for mode in ("unchanged", "edited"):
            if r[mode]["stream_gap_s"] > r["baseline_gap_s"] + STALL_MARGIN_S:
                ok = False
                print(f"MISS: {r['models']} models ({mode}): a listing stalled the stream "
                      f"{r[mode]['stream_gap_s'] * 1e3:.0f} ms (baseline "
                      f"{r['baseline_gap_s'] * 1e3:.0f} ms)")
        if r["models"] >= 1000 and r["unchanged"]["listing_median_s"] > TARGET_LIST_S:
            ok = False
            print(f"MISS: {r['models']} unchanged models listed in "
                  f"{r['unchanged']['listing_median_s'] * 1e3:.0f} ms (target < "
                  f"{TARGET_LIST_S * 1e3:.0f} ms)")
    print("PASS" if ok else "MISS (see above)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
