"""Human-readable text for the CLI's read commands (the --json forms print the API as is)."""

from __future__ import annotations

import time
from typing import Any


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def params(n: int | None) -> str:
    if not n:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def render_status(status: dict[str, Any], url: str) -> str:
    from llmctl.core.state import Backend  # here: the other commands need not import it

    d, b = status["daemon"], Backend.from_dict(status["backend"])
    workers = d.get("workers") or {}
    restarts = sum(int(w.get("restarts") or 0) for w in workers.values())
    lines = [f"llmctld {d['version']}  pid {d['pid']}  up {duration(d['uptime_s'])}  {url}"
             + (f"  ({restarts} worker restarts)" if restarts else "")]
    state = b.state
    if state == "ready":
        lines.append(f"model    {b.model}  ready  (llama-server pid {b.pid}, port "
                     f"{b.port}, loaded in {duration(b.load_seconds)}, up "
                     f"{duration(status['backend'].get('uptime_s'))})")
    elif state == "starting":
        progress = b.progress or {}
        pct = progress.get("percent")
        since = time.time() - b.started_at if b.started_at else None
        lines.append(f"model    {b.model}  loading  ({progress.get('phase', 'loading')}"
                     f"{'' if pct is None else f' {pct:.0f}%'}, {duration(since)} so far)")
    elif state == "failed":
        lines.append(f"model    {b.model or '-'}  FAILED: {b.error}")
        for line in b.log_tail:
            lines.append(f"  | {line}")
    elif (unloaded := (status.get("idle") or {}).get("unloaded")) and state == "stopped":
        # not "load one with switch": the next request brings this one back by itself
        lines.append(f"model    none ({unloaded['model']} unloaded for idleness)")
    else:
        lines.append(f"model    none ({state}) — load one with `llmctl switch <model>`")
    if (kv := kv_line(b.kv, state)) is not None:
        lines.append(f"cache    {kv}")
    lines.append(f"requests {status['in_flight']} in flight, {status.get('requests_total', 0)}"
                 f" served by this proxy worker")
    lines.append(f"default  {status['default_model'] or '-'}")
    if (status.get("idle") or {}).get("text"):
        lines.append(f"idle     {status['idle']['text']}")
    if status.get("config_error"):
        lines.append(f"config   ERROR: {status['config_error']}")
    from llmctl.cli.rpc_workers import worker_lines

    lines += worker_lines(status.get("workers") or [])
    return "\n".join(lines)


def kv_line(kv: dict[str, Any] | None, state: str) -> str | None:
    """The KV cache of the backend: what was restored and reused, or saved, or why not."""
    if not kv:
        return None
    if state == "stopped":
        if kv.get("saved_tokens"):
            return (f"saved {kv['saved_tokens']:,} tokens of {kv.get('model')} "
                    f"({size(kv.get('saved_bytes'))}, {duration(kv.get('save_seconds'))})")
        why = kv.get("save_error") or kv.get("save_skipped")
        return f"{kv.get('model')} not saved: {why}" if why else None
    if not kv.get("kept"):
        return f"not kept: {kv.get('reason')}"
    if kv.get("restored_tokens"):
        reused = kv.get("reused_tokens")
        return (f"restored {kv['restored_tokens']:,} tokens in "
                f"{duration(kv.get('restore_seconds'))}" + (
                    "" if reused is None else f", the first request reused {reused:,}"))
    if kv.get("restore_error"):
        return f"kept; the saved cache could not be restored ({kv['restore_error']})"
    return f"kept: {kv.get('reason')}"


def render_models(data: dict[str, Any]) -> str:
    models = data["models"]
    if not models:
        where = data.get("models_dir")
        return (f"no models found in {where} (nor in daemon.model_dirs).\n"
                "Add one:\n"
                f"  put a .gguf file anywhere under {where}  (no config needed), or\n"
                "  llmctl add /path/to/model.gguf              (links it in), or\n"
                "  llmctl pull unsloth/Qwen3-8B-GGUF:Q4_K_M     (downloads from Hugging Face)\n"
                "then `llmctl switch <id>` (see the README's Quick start).")
    rows = [("", "ID", "NAME", "SIZE", "MEMORY", "PARAMS", "QUANT", "CTX", "SOURCE")]
    problems = []
    notes = []
    for m in models:
        gguf = m.get("gguf") or {}
        mark = ("*" if m["active"] else " ") + ("d" if m["default"] else " ")
        if not m["available"]:
            mark = " !"
            problems.append(f"  ! {m['id']}: {m['error']}")
        if m.get("note"):
            notes.append(f"  ~ {m['id']}: {m['note']}")
        if m.get("tool_calls") is False:
            notes.append(f"  ~ {m['id']}: no tool calls (llama-server runs it with --no-jinja;"
                         f" `llmctl inspect {m['id']}` says what to do)")
        rows.append((mark, m["id"], m["name"], size(m.get("size_bytes")),
                     memory_cell(m.get("memory")), params(gguf.get("parameters")), gguf.get("quantization") or "-",
                     str(gguf.get("context_length") or "-"), source(m)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.append("(* active, d default, ! unavailable, ~ note; SOURCE: config = a config.yaml, "
               "file = a GGUF in gguf/, else the model_dirs entry)")
    out.append("(MEMORY: what it needs with its flags, `llmctl inspect` has the parts; "
               "! does not fit in free memory now, … being estimated, ? unknown)")
    out += [f"  ? {p}" for p in data.get("problems") or []]
    return "\n".join(out + notes + problems)


MIB = 1024 * 1024


def memory_total(memory: dict[str, Any]) -> int:
    """MiB a model needs in every place together (host and devices, no prompt cache)."""
    return int(memory["host_mib"]) + sum(int(v) for v in (memory.get("devices") or {}).values())


def memory_cell(memory: dict[str, Any] | None) -> str:
    if not memory:
        return "-"
    state = memory.get("state")
    if state == "pending":
        return "…"
    if state != "known":
        return "?"
    return size(memory_total(memory) * MIB) + ("" if memory.get("fits") else " !")


def _mib(n: int) -> str:
    return "<1 MiB" if n == 0 else size(n * MIB)  # llama-fit-params rounds down


def memory_lines(memory: dict[str, Any] | None) -> list[str]:
    """What `llmctl inspect` says about a model's memory (from GET /models/<id>)."""
    if not memory:
        return []
    if memory.get("state") == "pending":
        return ["memory   being estimated; ask again in a moment"]
    if memory.get("state") != "known":
        return [f"memory   unknown: {memory.get('error') or 'no estimate'}"]
    where = [f"{_mib(memory['host_mib'])} on the host"] + [
        f"{_mib(v)} on {name}" for name, v in (memory.get("devices") or {}).items()]
    label = "llama-fit-params" if memory["source"] == "llama-fit-params" else \
        "estimated from the GGUF, no llama-fit-params"
    ctx = f" with -c {memory['ctx_size']}" if memory.get("ctx_size") else ""
    parts = (f"weights {_mib(memory['weights_mib'])}, context "
             f"{_mib(memory['context_mib'])}, compute {_mib(memory['compute_mib'])}")
    if memory.get("extra_mib"):
        parts += f", projector/draft {_mib(memory['extra_mib'])}"
    if memory.get("cache_ram_mib"):
        parts += f"; and up to {_mib(memory['cache_ram_mib'])} of prompt cache " \
                 "(llama.cache_ram)"
    available = memory["available"]["host_mib"]
    released = f" + {_mib(memory['released_mib'])} from the running model" \
        if memory.get("released_mib") else ""
    verdict = "fits" if memory["fits"] else f"DOES NOT FIT ({', '.join(memory['short'])})"
    lines = [f"memory   {', '.join(where)}{ctx} ({label})", f"         {parts}",
             f"         {verdict}: {_mib(memory['need_host_mib'])} needed on the host, "
             f"{size(max(0, available) * MIB)} available "
             f"({size(memory['free']['host_mib'] * MIB)} free{released}, "
             f"{size(memory['margin_mib'] * MIB)} kept free: "
             "daemon.memory_margin)"]
    for name, avail in (memory["available"].get("devices") or {}).items():
        lines.append(f"         {name}: {_mib(memory['devices'][name])} needed, " + (
            "free memory unknown" if avail is None else f"{size(max(0, avail) * MIB)} available"))
    lines += [f"         note: {note}" for note in memory.get("notes") or []]
    return lines


def source(m: dict[str, Any]) -> str:
    """Where a model came from, short: its config, a bare file in gguf/, or which model dir;
    `+mmproj`, `+draft` and the shard count when it has them."""
    kind = m.get("source") or "config"
    label = kind if kind in ("config", "file") else _home(m.get("root") or "?")
    for key, tag in (("mmproj", "+mmproj"), ("draft", "+draft")):
        if m.get(key):
            label += f" {tag}"
    if m.get("shards"):
        label += f" ({m['shards']} shards)"
    return label


def _home(path: str) -> str:
    import os

    home = os.path.expanduser("~")
    return "~" + path[len(home):] if path == home or path.startswith(home + os.sep) else path


def render_inspect(data: dict[str, Any]) -> str:
    import yaml

    lines = [f"{data['id']}  ({data['name']})", f"file     {data.get('file') or '-'}",
             f"size     {size(data.get('size_bytes'))}",
             f"config   {data.get('config_file') or '(none: found as ' + source(data) + ')'}"]
    for key in ("mmproj", "draft", "note"):
        if data.get(key):
            lines.append(f"{key:<8} {data[key]}")
    if data.get("gguf"):
        g = data["gguf"]
        lines.append(f"gguf     {g.get('architecture')}, {params(g.get('parameters'))} params, "
                     f"{g.get('quantization', '?')}, trained context {g.get('context_length')}"
                     f", {g.get('block_count', '?')} layers")
    if data.get("gguf_error"):
        lines.append(f"gguf     cannot read header: {data['gguf_error']}")
    if data.get("kv_cache"):
        kv = data["kv_cache"]
        saved = kv.get("saved") or []
        lines.append(f"kv cache {'kept' if kv['kept'] else 'NOT kept'}: {kv['reason']}" + (
            f"; saved: {sum(s['tokens'] for s in saved):,} tokens "
            f"({size(sum(s['bytes'] for s in saved))})" if saved else ""))
    if data.get("tool_calls") is not None:
        lines.append("tools    " + ("requests with tools are formatted (Jinja chat template)"
                                    if data["tool_calls"] else str(data["tool_calls_note"])))
    if not data["available"]:
        lines.append(f"ERROR    {data['error']}")
    lines += memory_lines(data.get("memory"))
    if data.get("config"):
        lines.append("merged configuration:")
        dumped = yaml.safe_dump(data["config"], sort_keys=False, default_flow_style=False)
        lines.extend("  " + ln for ln in dumped.rstrip().splitlines())
    return "\n".join(lines)
