"""What the Ollama routes say about models: the entries of /api/tags and /api/ps, and the
answer of /api/show, from the model's config and its GGUF header.

`local` is the model behind the stable endpoint: the active one, else the default one (the one
a request would load). Every model can also be shown by its id or alias, and with
daemon.route_by_model /api/tags lists them all. Ollama clients add a `:latest` tag to names;
it is ignored.

Ollama's `digest` is the SHA-256 of the model blob; hashing a many-GB file on every listing
is too slow, so ours is the SHA-256 of the file's path, size and modification time: stable
while the file is unchanged, which is what clients use it for.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

from llmctl.core.aliases import name_index
from llmctl.core.catalog import ModelEntry
from llmctl.core.gguf import GGUFError, read_facts, read_metadata
from llmctl.daemon.api.hub import Hub
from llmctl.daemon.memory.needs import MIB
from llmctl.daemon.ollama.translate import bare_name

LOCAL = "local"
# Ollama's expires_at for a model that is never unloaded: now + the longest Go duration
NEVER = timedelta(microseconds=(2**63 - 1) // 1000)
_TEMPLATE_KEY = "tokenizer.chat_template"


def local_entry(hub: Hub) -> ModelEntry | None:
    backend = hub.backend.backend
    active = backend.model if backend.state in ("starting", "ready") else None
    return hub.config.entry(active or hub.config.default_model)


def find(hub: Hub, name: str) -> tuple[bool, ModelEntry | None]:
    """(known, entry) for a requested name (an id or an alias); `local` is always known,
    maybe without an entry."""
    name = bare_name(name)
    if name == LOCAL:
        return True, local_entry(hub)
    entry = hub.config.entry(name_index(hub.config.catalog).get(name))
    return entry is not None, entry


def listed(hub: Hub) -> list[tuple[str, ModelEntry | None]]:
    """The names /api/tags lists: `local`, and with daemon.route_by_model (requests then go
    to the model they name) every available model id and alias."""
    names: list[tuple[str, ModelEntry | None]] = [(LOCAL, local_entry(hub))]
    if hub.gate.scheduler.routing:
        for entry in hub.config.catalog.entries:
            if entry.id is not None and entry.available and entry.config:
                names += [(name, entry) for name in (entry.id, *entry.config["aliases"])]
    return names


def _facts(entry: ModelEntry | None) -> dict[str, Any]:
    if entry is None or entry.model_path is None or not entry.available:
        return {}
    try:
        return read_facts(entry.model_path)
    except (GGUFError, OSError):
        return {}


def _metadata(entry: ModelEntry | None) -> dict[str, Any]:
    if entry is None or entry.model_path is None or not entry.available:
        return {}
    try:
        return read_metadata(entry.model_path)
    except (GGUFError, OSError):
        return {}


def human_number(count: int) -> str:
    """A parameter count as Ollama writes it: 8B, 7.6B, 494.03M, 12K."""
    for size, unit, digits in ((1e9, "B", 1), (1e6, "M", 2)):
        if count >= size:
            number = count / size
            return f"{number:.0f}{unit}" if number == int(number) else f"{number:.{digits}f}{unit}"
    return f"{count / 1e3:.0f}K" if count >= 1000 else str(count)


def details(facts: dict[str, Any]) -> dict[str, Any]:
    family = facts.get("architecture") or ""
    return {"parent_model": "", "format": "gguf", "family": family,
            "families": [family] if family else None,
            "parameter_size": human_number(facts["parameters"]) if facts.get("parameters")
            else "",
            "quantization_level": facts.get("quantization") or ""}


def _file_stat(entry: ModelEntry | None) -> tuple[int, float, str]:
    """Size, mtime and our digest of the model file (zeros when there is none)."""
    if entry is None or entry.model_path is None:
        return 0, 0.0, ""
    try:
        st = entry.model_path.stat()
    except OSError:
        return 0, 0.0, ""
    key = f"{entry.model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return st.st_size, st.st_mtime, hashlib.sha256(key).hexdigest()


def _iso(timestamp: float | datetime) -> str:
    when = timestamp if isinstance(timestamp, datetime) else datetime.fromtimestamp(
        timestamp, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def summary(name: str, entry: ModelEntry | None) -> dict[str, Any]:
    """One entry of /api/tags."""
    size, mtime, digest = _file_stat(entry)
    return {"name": name, "model": name, "modified_at": _iso(mtime), "size": size,
            "digest": digest, "details": details(_facts(entry)),
            "capabilities": capabilities(entry, _metadata(entry))}


def _llama(entry: ModelEntry | None) -> dict[str, Any]:
    return entry.config["llama"] if entry is not None and entry.config else {}


def embeddings_enabled(entry: ModelEntry | None) -> bool:
    """Whether llama-server runs this model with --embeddings (config key llama.embeddings,
    or the flag in llama.extra_args)."""
    llama = _llama(entry)
    args = [str(a) for a in llama.get("extra_args") or []]
    return bool(llama.get("embeddings")) or "--embeddings" in args or "--embedding" in args


def capabilities(entry: ModelEntry | None, metadata: dict[str, Any]) -> list[str]:
    """Ollama's capabilities: `completion` (chat and generate) unless the GGUF is an
    embedding model (it declares a pooling type), `embedding` when llama-server is started
    with embeddings on (generative models keep answering chats then), `tools` and `thinking`
    when the chat template handles them, `vision` when a projector is configured."""
    arch = metadata.get("general.architecture")
    completion = f"{arch}.pooling_type" not in metadata
    caps = (["completion"] if completion else []) + (
        ["embedding"] if embeddings_enabled(entry) else [])
    template = metadata.get(_TEMPLATE_KEY)
    if completion and isinstance(template, str):
        if "tools" in template:
            caps.append("tools")
        if "enable_thinking" in template or "<think>" in template:
            caps.append("thinking")
    args = [str(a) for a in _llama(entry).get("extra_args") or []]
    if _llama(entry).get("mmproj") or "--mmproj" in args or "-mm" in args:
        caps.append("vision")
    return caps


def context_length(entry: ModelEntry | None, facts: dict[str, Any]) -> int:
    configured = _llama(entry).get("ctx_size") or 0
    return int(configured or facts.get("context_length") or 0)


def show(entry: ModelEntry | None) -> dict[str, Any]:
    """The answer of /api/show."""
    facts, metadata = _facts(entry), _metadata(entry)
    info = {k: v for k, v in metadata.items() if k != _TEMPLATE_KEY}
    if facts.get("parameters"):
        info.setdefault("general.parameter_count", facts["parameters"])
    ctx = context_length(entry, facts)
    parameters = f"num_ctx                        {ctx}" if ctx else ""
    path = entry.model_path if entry is not None else None
    modelfile = (f"# Served by llmctl: model {entry.id} ({entry.config_file})\n"
                 f"FROM {path}\n" + (f"PARAMETER num_ctx {ctx}\n" if ctx else "")
                 if entry is not None else "")
    _, mtime, _ = _file_stat(entry)
    return {"modelfile": modelfile, "parameters": parameters,
            "template": metadata.get(_TEMPLATE_KEY) or "", "details": details(facts),
            "model_info": info, "capabilities": capabilities(entry, metadata),
            "modified_at": _iso(mtime)}


def running(hub: Hub) -> list[dict[str, Any]]:
    """The entries of /api/ps: the loaded model (under `local`, or under its id when requests
    are routed by model name), with when its idle unload is due."""
    backend = hub.backend.backend
    if backend.state not in ("starting", "ready"):
        return []
    entry = hub.config.entry(backend.model)
    size, _, digest = _file_stat(entry)
    facts = _facts(entry)
    scheduler = hub.gate.scheduler
    idle = scheduler.status()
    # unloads_in_s counts down while idle; during a request the timeout starts at its end
    seconds = idle["unloads_in_s"] if idle["unloads_in_s"] is not None else \
        idle["idle_unload_s"]
    expires = datetime.now(timezone.utc) + (NEVER if seconds is None or backend.pinned
                                            else timedelta(seconds=seconds))
    name = backend.model if scheduler.routing and backend.model else LOCAL
    # Ollama's size is the memory the model takes, size_vram the device part of it: the
    # estimate for its launch (daemon/memory/) when there is one, else the file ("all in RAM")
    needs = hub.memory.needs(entry) if entry is not None else None
    vram = sum(needs.devices.values()) * MIB if needs else 0
    return [{"name": name, "model": name, "size": needs.host * MIB + vram if needs else size,
             "digest": digest, "details": details(facts), "expires_at": _iso(expires),
             "size_vram": vram, "context_length": context_length(entry, facts)}]
