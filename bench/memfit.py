"""How close the memory fit's prediction is to what llama-server really takes:
`python -m bench.memfit`.

For each model (the tiny test model, the big-KV tiny model, the starter Gemma 3 270M) at three
context sizes, with the exact argv llmctld would launch (llama_server.build_argv from the
defaults: q8_0 K/V, flash attention auto, `--load-mode none`), and once more with mmap on at
the middle size:

1. predicted host memory: llama-fit-params' Host line (weights + context + compute) for that
   argv, and the GGUF fallback's estimate (gguf_estimate.py) beside it;
2. measured: llama-server spawned with the same argv, `/health`, one short chat completion,
   then the process's PSS (with mmap on, the mapped model's resident pages count in it), USS
   and RSS; and PSS again after a long prompt (half the context, at most ~1,500 tokens: at
   least two full micro-batches of 512 go through the compute buffers).

The report is the ratio PSS / predicted and the difference in MiB. What llama.cpp's figures
do not include is llama-server's own footprint: its code and shared libraries, the vocabulary
and tokenizer tables, the HTTP threads, the slot's prompt copy; the difference column shows
how much that is (about constant across contexts). A context bigger than what was touched
may also be predicted but not resident: llama.cpp clears the KV buffer at start (memset:
resident), while compute buffers are allocated once and may be touched only in part.

Not a test: nothing is asserted. Options: --json PATH, --contexts 2048,8192,32768, --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

from bench.realmodel import starter_gguf  # noqa: E402
from llmctl.core.config import DEFAULTS  # noqa: E402
from llmctl.daemon.backend import llama_server  # noqa: E402
from llmctl.daemon.memory import fit_params, gguf_estimate  # noqa: E402
from llmctl.daemon.memory.needs import HOST, MIB  # noqa: E402

from harness import Ports  # noqa: E402
from tinymodel import write_big_llama, write_tiny_llama  # noqa: E402

READY_TIMEOUT = 120.0
CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
        "temperature": 0}


def argv_for(binary: Path, caps: Any, model: Path, model_id: str, ctx: int, port: int,
             mmap: bool, extra: list[str]) -> list[str]:
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(id=model_id)
    cfg["server"]["port"] = port
    cfg["llama"].update(ctx_size=ctx, mmap=mmap, extra_args=extra)
    return llama_server.build_argv(binary, caps, cfg, model)


def predicted(binary: Path, argv: list[str], model: Path, ctx: int) -> dict[str, Any]:
    tool = fit_params.find(binary)
    assert tool is not None, f"no llama-fit-params beside {binary}"
    fit = fit_params.fit_argv(tool, argv, fit_params.accepted_flags(tool))
    started = time.perf_counter()
    needs = fit_params.estimate(fit, ctx)
    seconds = time.perf_counter() - started
    host = needs.parts[HOST]
    guess = gguf_estimate.estimate(argv, [model]).parts[HOST]
    return {"fit_params_mib": host.total, "weights_mib": host.weights,
            "context_mib": host.context, "compute_mib": host.compute,
            "fit_params_seconds": round(seconds, 3), "gguf_estimate_mib": guess.total}


def pss(pid: int) -> dict[str, float]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    infos = [p.memory_full_info() for p in procs]
    return {"pss_mib": round(sum(i.pss for i in infos) / MIB, 1),
            "uss_mib": round(sum(i.uss for i in infos) / MIB, 1),
            "rss_mib": round(sum(i.rss for i in infos) / MIB, 1)}


def measured(argv: list[str], port: int, log: Path, long_prompt: str) -> dict[str, Any]:
    env = llama_server.clean_env(os.environ)
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {proc.returncode}; see {log}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server was not ready in {READY_TIMEOUT:.0f}s")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        requests.post(url, json=CHAT, timeout=120).raise_for_status()
        out = pss(proc.pid)
        long = {**CHAT, "messages": [{"role": "user", "content": long_prompt}]}
        r = requests.post(url, json=long, timeout=300)
        if r.status_code != 200:
            raise RuntimeError(f"the long prompt got {r.status_code}: {r.text[:300]}")
        out["prompt_tokens"] = r.json()["usage"]["prompt_tokens"]
        out["pss_long_mib"] = pss(proc.pid)["pss_mib"]
        return out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def run(contexts: list[int], work: Path) -> list[dict[str, Any]]:
    binary = llama_server.find_binary("llama-server")
    caps = llama_server.detect(binary)
    # (name, file, extra flags, trained context, tokens per "hello " of the long prompt: the
    # tiny models spell it in bytes, Gemma has the word). llama-server gives a slot at most the
    # trained context, whatever -c allocates.
    models = [("tiny", write_tiny_llama(work / "tiny.gguf"), [], 2048, 8),
              ("big", write_big_llama(work / "big.gguf"), [], 2048, 8),
              ("starter", starter_gguf(), ["--no-jinja", "--chat-template", "gemma"], 32768, 1)]
    ports = Ports()
    rows = []
    for name, model, extra, trained, tokens_per_word in models:
        plan = [(ctx, False) for ctx in contexts] + [(contexts[len(contexts) // 2], True)]
        for ctx, mmap in plan:
            port = ports.take()
            argv = argv_for(binary, caps, model, name, ctx, port, mmap, extra)
            row: dict[str, Any] = {"model": name, "ctx": ctx, "mmap": mmap,
                                   **predicted(binary, argv, model, ctx)}
            prompt = "hello " * (min(ctx, trained) // 2 // tokens_per_word)
            row.update(measured(argv, port, work / f"{name}-{ctx}-{int(mmap)}.log", prompt))
            row["ratio"] = round(row["pss_mib"] / max(1, row["fit_params_mib"]), 2)
            row["difference_mib"] = round(row["pss_mib"] - row["fit_params_mib"], 1)
            row["ratio_long"] = round(row["pss_long_mib"] / max(1, row["fit_params_mib"]), 2)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


HEADER = (f"{'model':<8} {'ctx':>6} {'mmap':>4} {'fit MiB':>8} {'(w/ctx/cmp)':>16} "
          f"{'gguf':>6} {'PSS':>8} {'USS':>8} {'RSS':>8} {'PSS/fit':>7} {'diff':>7} "
          f"{'long tok':>8} {'PSS':>8} {'PSS/fit':>7} {'fit s':>6}")


def format_row(r: dict[str, Any]) -> str:
    split = f"{r['weights_mib']}/{r['context_mib']}/{r['compute_mib']}"
    return (f"{r['model']:<8} {r['ctx']:>6} {'on' if r['mmap'] else 'off':>4} "
            f"{r['fit_params_mib']:>8} {split:>16} {r['gguf_estimate_mib']:>6} "
            f"{r['pss_mib']:>8.1f} {r['uss_mib']:>8.1f} {r['rss_mib']:>8.1f} {r['ratio']:>7.2f} "
            f"{r['difference_mib']:>7.1f} {r['prompt_tokens']:>8} {r['pss_long_mib']:>8.1f} "
            f"{r['ratio_long']:>7.2f} {r['fit_params_seconds']:>6.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", default="2048,8192,32768")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="llmctl-bench-memfit-"))
    print(HEADER, flush=True)
    try:
        rows = run(contexts, work)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
