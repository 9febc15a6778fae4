"""The decision: does a launch fit in what is free now, and if not, what would.

On the host a launch needs llama-fit-params' Host figure, the files it does not see (a
projector, a draft model), and the prompt cache llama-server may grow to (`--cache-ram`,
config llama.cache_ram, not in llama.cpp's figures). That cache is bounded by its MiB when
positive, and by the context's tokens when -1 (llama-server's "no limit" still caps the
prompts it keeps at n_ctx tokens: their KV is at most the context's); 0 turns it off, and with
a projector llama-server keeps none. Available is what is free now, plus what stopping the model
it replaces gives back, minus daemon.memory_margin. Each device the same way, without a
prompt cache; a device llmctl cannot read (no NVML, say) is not judged.

What would fit: the largest context whose figures, scaled from these (context and its cache
allowance grow with -c, the rest is held: compute shrinks with -c, so this errs small), fit
everywhere; preload.py checks it with one more estimator run before offering it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmctl.daemon.memory.free import Free
from llmctl.daemon.memory.needs import HOST, Needs

MIN_CONTEXT = 512  # smaller is not worth offering


@dataclass(frozen=True)
class Budget:
    """What a launch is judged against: free memory now and what counts with it."""

    free: Free
    margin: int  # daemon.memory_margin, MiB kept free on the host and each device
    cache_ram: int  # llama-server's --cache-ram as it will run (0: no prompt cache)
    released: int = 0  # MiB the replaced model gives back on the host
    released_devices: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    fits: bool
    need_host: int  # MiB, with the prompt-cache allowance
    cache_allowance: int
    available_host: int
    free: Free
    released: int  # MiB the replaced model gives back on the host
    margin: int
    devices: dict[str, tuple[int, int | None]]  # name -> (need, available; None: unknown)
    short: tuple[str, ...]  # where it does not fit


def budget_for(cfg: dict[str, Any], caps: Any, free: Free, released: int = 0,
               released_devices: dict[str, int] | None = None) -> Budget:
    """The budget of one model's merged config under this llama-server build (`caps`): a
    build without --cache-ram has no prompt cache."""
    cache_ram = cfg["llama"]["cache_ram"] if caps.has("--cache-ram") and \
        not cfg.get("mmproj_file") else 0
    return Budget(free, cfg["daemon"]["memory_margin"], cache_ram, released,
                  released_devices or {})


def cache_allowance(cache_ram: int, needs: Needs) -> int:
    """MiB of host RAM llama-server's prompt cache may take (`cache_ram` as it is passed:
    0 when off, or when the build or a projector means there is none)."""
    if cache_ram == 0:
        return 0
    return needs.sum("context") if cache_ram < 0 else cache_ram


def decide(needs: Needs, budget: Budget) -> Verdict:
    allowance = cache_allowance(budget.cache_ram, needs)
    need_host = needs.host + allowance
    available = budget.free.host + budget.released - budget.margin
    devices: dict[str, tuple[int, int | None]] = {}
    for name, need in needs.devices.items():
        found = budget.free.devices.get(name)
        devices[name] = (need, None if found is None else
                         found + budget.released_devices.get(name, 0) - budget.margin)
    short = ([HOST] if need_host > available else []) + [
        name for name, (need, avail) in devices.items() if avail is not None and need > avail]
    return Verdict(not short, need_host, allowance, available, budget.free, budget.released,
                   budget.margin, devices, tuple(short))


def scaled(needs: Needs, ctx: int) -> Needs:
    """The figures at another context size, context parts scaled linearly."""
    if not needs.ctx_size:
        return needs
    factor = ctx / needs.ctx_size
    parts = {name: type(part)(part.weights, int(part.context * factor), part.compute)
             for name, part in needs.parts.items()}
    return Needs(needs.source, parts, ctx, needs.extra_mib, needs.notes)


def context_that_fits(needs: Needs, budget: Budget) -> int | None:
    """The largest context below the current one that fits where this one did not, rounded
    down (to 1024 from 4096 up, else 256); None when not even MIN_CONTEXT does."""
    if not needs.ctx_size or needs.ctx_size <= MIN_CONTEXT:
        return None

    def fits(ctx: int) -> bool:
        return decide(scaled(needs, ctx), budget).fits

    low, high = MIN_CONTEXT, needs.ctx_size
    if not fits(low):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    step = 1024 if low >= 4096 else 256
    return max(MIN_CONTEXT, low // step * step)


def fields(needs: Needs, verdict: Verdict) -> dict[str, Any]:
    """The `memory` object of listings, `llmctl inspect --json` and a refusal's reply."""
    return {
        "state": "known", "source": needs.source, "ctx_size": needs.ctx_size,
        "host_mib": needs.host, "devices": needs.devices,
        "weights_mib": needs.sum("weights"), "context_mib": needs.sum("context"),
        "compute_mib": needs.sum("compute"), "extra_mib": needs.extra_mib,
        "cache_ram_mib": verdict.cache_allowance, "need_host_mib": verdict.need_host,
        "parts": {name: part.to_dict() for name, part in needs.parts.items()},
        "notes": list(needs.notes), "fits": verdict.fits, "short": list(verdict.short),
        "free": verdict.free.to_dict(),
        "available": {"host_mib": verdict.available_host,
                      "devices": {n: a for n, (_, a) in verdict.devices.items()}},
        "released_mib": verdict.released, "margin_mib": verdict.margin,
    }


def mib(n: int | float) -> str:
    return f"{n / 1024:.1f} GiB" if abs(n) >= 1024 else f"{n:.0f} MiB"


def describe(model: str, needs: Needs, verdict: Verdict) -> str:
    """Why it does not fit, in one sentence with every figure that decided it."""
    host = needs.parts.get(HOST)
    bits = [f"{mib(host.weights)} weights, {mib(host.context)} context, "
            f"{mib(host.compute)} compute"] if host else []
    if needs.extra_mib:
        bits.append(f"{mib(needs.extra_mib)} projector/draft files")
    if verdict.cache_allowance:
        bits.append(f"up to {mib(verdict.cache_allowance)} of prompt cache (llama.cache_ram)")
    ctx = f" with -c {needs.ctx_size}" if needs.ctx_size else ""
    source = "" if needs.source == "llama-fit-params" else " (estimated from the GGUF)"
    text = f"{model} needs {mib(verdict.need_host)} of RAM{ctx}{source} ({', '.join(bits)})"
    available = f"{mib(verdict.free.host)} free"
    if verdict.released:
        available += f" + {mib(verdict.released)} from the model it replaces"
    text += f"; {mib(max(0, verdict.available_host))} is available ({available}, less " \
            f"{mib(verdict.margin)} kept free: daemon.memory_margin)"
    for name in verdict.short:
        if name != HOST:
            need, avail = verdict.devices[name]
            text += f"; on {name} it needs {mib(need)}, {mib(max(0, avail or 0))} is available"
    return text


def advice(model: str, suggestion: dict[str, int] | None) -> str:
    if suggestion:
        flags = " ".join(f"{flag} {value}" for flag, value in suggestion.items())
        return (f" It would fit with {flags}: `llmctl switch {model} --fit` loads it so (or "
                f"set llama.ctx_size{' and llama.gpu_layers' if '-ngl' in suggestion else ''}"
                f" in its config); `--no-fit-check` loads it as configured anyway.")
    return (f" No smaller context fits either: free memory, lower llama.cache_ram, or use a "
            f"smaller quantization; `llmctl switch {model} --no-fit-check` loads it anyway.")
