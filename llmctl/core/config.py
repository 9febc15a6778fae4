"""Configuration: built-in defaults, the global YAML file, and per-model YAML files.

Precedence, lowest first: DEFAULTS -> $LLMCTL_HOME/config/default.yaml -> a model's config.yaml
(mappings are merged key by key; lists and scalars replace). Every file is validated against
SCHEMA, and every error names the file, the line and the dotted key, so a user can jump to it.

This module only reads and validates; discovery.py decides which files to read.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmctl.core.durations import DurationError, parse_duration

MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

DEFAULTS: dict[str, Any] = {
    "server": {
        "host": "127.0.0.1",
        "port": 11435,
        "binary": "llama-server",
        "readyTimeoutMs": 600_000,
        "stopTimeoutMs": 10_000,
        "stallTimeoutMs": 120_000,
        "adoptTimeoutMs": 10_000,
    },
    "daemon": {
        "host": "127.0.0.1",
        "port": 16384,
        "default_model": None,
        "load_default_on_startup": False,
        "allowed_origins": [],
        "allow_remote": False,
        "log_max_bytes": 20 * 1024 * 1024,
        "idle_unload": None,
        "route_by_model": False,
        "queue_timeout": "5m",
        "queue_depth": 64,
        "allow_backend_writes": False,
        "model_dirs": [],
        "starter": True,
        "rpc_check_interval": "5s",  # how often llmctld looks at each RPC worker
        "memory_margin": 1024,  # MiB kept free on the host and on each device (daemon/memory/)
        # what one client may hold (admission/client_limits.py reads them)
        "header_timeout": "10s",  # a request's line and headers, from its first byte
        "keepalive_timeout": "60s",  # an idle kept-alive connection is closed after this
        "body_timeout": "30s",  # each 64 KiB of a request body must arrive within this
        "max_connections": 512,  # client connections at once; more get 503
        "max_body": 64,  # MiB, a /v1 or /api request body (however framed)
        "max_large_bodies": 8,  # bodies over 1 MiB being received at once; more get 503
        "allow_browser_pull": False,  # true: POST /pull and /api/pull also from a browser page
    },
    "workers": {},  # RPC workers: name -> host:port (llama.workers picks them per model)
    "llama": {
        "flash_attn": "auto",
        "gpu_layers": 999,
        "mmap": False,
        "ctx_size": 0,
        "cache_type_k": "q8_0",
        "cache_type_v": "q8_0",
        "parallel": 1,
        "metrics": True,
        "slots": True,
        "reasoning_format": "deepseek",
        "embeddings": False,
        "reranking": False,
        "pooling": None,
        "swa_full": None,  # None: the KV store decides (daemon/kvcache/policy.py)
        "cache_ram": 8192,  # MiB, llama-server's --cache-ram (its own default); -1 no limit, 0 off
        "workers": [],  # names from `workers:`, or "all": llama-server --rpc
        "extra_args": [],
    },
    "cache": {  # KV-cache continuity across switches and restarts (daemon/kvcache/)
        "persist": "auto",
        "min_tokens": 256,
        "save_timeout": "10s",
        "max_disk": 8192,  # MiB, never more than half the free space of the disk it is on
        "swa_full_max": 1024,  # MiB of extra KV memory --swa-full may cost under `auto`
    },
    "observability": {  # daemon/observe/observer.py: off means not even the middleware is installed
        "metrics": True,
        "activity": True,
        "activity_size": 500,
    },
    "pi": {
        "model": {
            "reasoning": False,
            "input": ["text"],
            "contextWindow": 131072,
            "maxTokens": 8192,
        },
        "provider_compat": {
            "supportsDeveloperRole": False,
            "supportsStore": False,
            "maxTokensField": "max_tokens",
        },
    },
}


class ConfigError(Exception):
    """A problem in one configuration file, located as precisely as we can."""

    def __init__(self, file: Path | str, line: int | None, key: str | None, message: str):
        self.file = str(file)
        self.line = line
        self.key = key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


# --- validators -------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # returns an error message or None


def _int(lo: int | None = None, hi: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"expected an integer, got {v!r}"
        if lo is not None and v < lo:
            return f"must be at least {lo}, got {v}"
        if hi is not None and v > hi:
            return f"must be at most {hi}, got {v}"
        return None

    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {v!r}"


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) and v != "" else f"expected a non-empty string, got {v!r}"


def _optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def _str_list(v: Any) -> str | None:
    if not isinstance(v, list) or not all(isinstance(x, str | int | float) for x in v):
        return f"expected a list of strings, got {v!r}"
    return None


def _choice(*choices: str) -> Check:
    return lambda v: None if v in choices else f"expected one of {', '.join(choices)}, got {v!r}"


def _flash_attn(v: Any) -> str | None:
    # YAML 1.1 reads a bare `on`/`off` as a boolean; accept both spellings.
    return None if isinstance(v, bool) or v in ("on", "off", "auto") else (
        f"expected on, off or auto, got {v!r}"
    )


def _loopback_host(v: Any) -> str | None:
    if (err := _str(v)) is not None:
        return err
    return None if is_loopback(v) else (
        f"llama-server must listen on a loopback address (127.0.0.1, ::1 or localhost), not {v!r}"
    )


def _model_inputs(v: Any) -> str | None:
    if not isinstance(v, list) or not v or not set(v) <= {"text", "image"}:
        return f"expected a list drawn from [text, image], got {v!r}"
    return None


def _scalar_map(v: Any) -> str | None:
    if not isinstance(v, dict) or not all(
        isinstance(x, str | int | float | bool) for x in v.values()
    ):
        return f"expected a mapping of names to plain values, got {v!r}"
    return None


def _duration_or_never(v: Any) -> str | None:
    try:
        parse_duration(v)
    except DurationError as e:
        return str(e)
    return None


def _positive_duration(v: Any) -> str | None:
    try:
        seconds = parse_duration(v)
    except DurationError as e:
        return str(e)
    return None if seconds else f"must be longer than 0, got {v!r}"


def _save_timeout(v: Any) -> str | None:
    """A KV-cache save runs inside a stop, and a daemon's shutdown gives its stop 60 s."""
    if (err := _positive_duration(v)) is not None:
        return err
    return None if (parse_duration(v) or 0) <= 30 else f"must be at most 30s, got {v!r}"
def _between(v: Any, lo: float, hi: float) -> str | None:
    seconds = parse_duration(v) or 0.0
    return None if lo <= seconds <= hi else f"must be between {lo:g}s and {hi:g}s, got {v!r}"


# Names a client may send as `model`: ids plus what OpenAI and Ollama clients use (`:`, `/`).
ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+:/-]{0,127}$")
RESERVED_NAMES = ("local",)  # the proxy's own model name
# Body fields the proxy itself relies on: overriding them would break routing or the
# response's shape the client asked for.
PROTECTED_FIELDS = ("model", "stream")


def _aliases(v: Any) -> str | None:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        return f"expected a list of names, got {v!r}"
    for name in v:
        if not ALIAS_RE.fullmatch(name):
            return (f"{name!r} is not a usable name: letters, digits, '.', '_', '+', ':', '/' "
                    "or '-', starting with a letter or digit")
        if name in RESERVED_NAMES:
            return f"{name!r} is reserved (it always means the active model)"
    if len(set(v)) != len(v):
        return f"a name appears twice in {v!r}"
    return None


def _json_value(v: Any) -> bool:
    if v is None or isinstance(v, str | int | float | bool):
        return True
    if isinstance(v, list):
        return all(_json_value(x) for x in v)
    return isinstance(v, dict) and all(isinstance(k, str) and _json_value(x)
                                       for k, x in v.items())


def _body_fields(v: Any) -> str | None:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        return f"expected a mapping of request fields to values, got {v!r}"
    if protected := [k for k in v if k in PROTECTED_FIELDS]:
        return f"{', '.join(protected)} cannot be overridden (llmctl relies on it)"
    bad = [k for k, x in v.items() if not _json_value(x)]
    return f"{', '.join(bad)}: values must be plain JSON (text, numbers, lists, mappings)" \
        if bad else None


def _field_names(v: Any) -> str | None:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        return f"expected a list of request field names, got {v!r}"
    if protected := [k for k in v if k in PROTECTED_FIELDS]:
        return f"{', '.join(protected)} cannot be stripped (llmctl relies on it)"
    return None


WORKER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_NAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def _worker_map(v: Any) -> str | None:
    """`workers:` maps names to `host:port`, as llama.cpp's RPC client reads an endpoint:
    IPv4 or a host name (it splits at the first `:` and resolves IPv4 only)."""
    if not isinstance(v, dict):
        return f"expected a mapping of worker names to host:port, got {v!r}"
    seen: dict[str, str] = {}
    for name, address in v.items():
        if not isinstance(name, str) or not WORKER_NAME_RE.fullmatch(name) or name == "all":
            return (f"{name!r} is not a usable worker name: letters, digits, '.', '_' or '-' "
                    "(and not `all`, which llama.workers uses for every worker)")
        if (problem := worker_address_problem(address)) is not None:
            return f"{name}: {problem}"
        if address in seen:
            return f"{name} and {seen[address]} are the same worker ({address})"
        seen[address] = name
    return None


def worker_address_problem(address: Any) -> str | None:
    if not isinstance(address, str) or address.count(":") != 1:
        hint = " (llama.cpp's RPC client takes IPv4 or a host name, not IPv6)" \
            if isinstance(address, str) and address.count(":") > 1 else ""
        return f"expected host:port, got {address!r}{hint}"
    host, port = address.split(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{port!r} in {address!r} is not a port number"
    if not _HOST_NAME_RE.fullmatch(host):
        return f"{host!r} in {address!r} is not an IPv4 address or host name"
    return None


def _worker_names(v: Any) -> str | None:
    if v == "all":
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        return f"expected a list of worker names (from `workers:`) or `all`, got {v!r}"
    if len(set(v)) != len(v):
        return f"a worker appears twice in {v!r}"
    return None


def model_workers(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, host:port) of the RPC workers a merged config asks for (`llama.workers`), in
    its order (`all`: every worker, in the order of `workers:`). Raises ValueError naming
    an unknown worker."""
    known: dict[str, str] = cfg.get("workers") or {}
    wanted = cfg["llama"].get("workers") or []
    names = list(known) if wanted == "all" else list(wanted)
    unknown = [n for n in names if n not in known]
    if unknown:
        defined = ", ".join(known) if known else "none: add a `workers:` section"
        raise ValueError(f"names no worker {', '.join(map(repr, unknown))} (workers in "
                         f"config/default.yaml: {defined})")
    return [(name, known[name]) for name in names]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# The schema mirrors DEFAULTS. A dict is a section (unknown keys are errors); a callable checks a
# value. FREE marks a mapping whose keys are the user's (checked as a whole).
SECTIONS: dict[str, Any] = {
    "server": {
        "host": _loopback_host,
        "port": _int(1, 65535),
        "binary": _str,
        "readyTimeoutMs": _int(1000),
        "stopTimeoutMs": _int(100, 600_000),
        "stallTimeoutMs": _int(0),
        "adoptTimeoutMs": _int(0, 600_000),
    },
    "daemon": {
        "host": _str,
        "port": _int(1, 65535),
        "default_model": _optional(_str),
        "load_default_on_startup": _bool,
        "allowed_origins": _str_list,
        "allow_remote": _bool,
        "log_max_bytes": _int(64 * 1024),
        "idle_unload": _duration_or_never,
        "route_by_model": _bool,
        "queue_timeout": _positive_duration,
        "queue_depth": _int(1, 100_000),
        "allow_backend_writes": _bool,
        "model_dirs": _str_list,
        "starter": _bool,
        "rpc_check_interval": lambda v: _positive_duration(v) or _between(v, 0.2, 3600),
        "memory_margin": _int(0),
        "header_timeout": lambda v: _positive_duration(v) or _between(v, 0.1, 3600),
        "keepalive_timeout": lambda v: _positive_duration(v) or _between(v, 0.1, 86400),
        "body_timeout": lambda v: _positive_duration(v) or _between(v, 0.1, 3600),
        "max_connections": _int(4, 100_000),
        "max_body": _int(1, 64 * 1024),
        "max_large_bodies": _int(1, 10_000),
        "allow_browser_pull": _bool,
    },
    "workers": _worker_map,
    "llama": {
        "flash_attn": _flash_attn,
        "gpu_layers": _int(-1),
        "mmap": _bool,
        "ctx_size": _int(0),
        "cache_type_k": _str,
        "cache_type_v": _str,
        "parallel": _int(1, 256),
        "metrics": _bool,
        "slots": _bool,
        "reasoning_format": _str,
        "embeddings": _bool,
        "reranking": _bool,
        "pooling": _optional(_choice("none", "mean", "cls", "last", "rank")),
        "swa_full": _optional(_bool),
        "cache_ram": _int(-1),
        "workers": _worker_names,
        "extra_args": _str_list,
    },
    "cache": {
        "persist": _choice("auto", "off"),
        "min_tokens": _int(1),
        "save_timeout": _save_timeout,
        "max_disk": _int(0),
        "swa_full_max": _int(0),
    },
    "observability": {
        "metrics": _bool,
        "activity": _bool,
        "activity_size": _int(1, 100_000),
    },
    "pi": {
        "model": {
            "name": _str,
            "reasoning": _bool,
            "input": _model_inputs,
            "contextWindow": _int(1),
            "maxTokens": _int(1),
        },
        "provider_compat": _scalar_map,
    },
}

GLOBAL_SCHEMA: dict[str, Any] = SECTIONS
MODEL_SCHEMA: dict[str, Any] = {
    "id": _str,
    "name": _str,
    "model_file": _str,
    "mmproj_file": _str,
    "draft_model_file": _str,
    "description": _str,
    "llama": SECTIONS["llama"],
    "cache": {k: SECTIONS["cache"][k] for k in ("persist", "min_tokens")},
    "pi": SECTIONS["pi"],
    "idle_unload": _duration_or_never,
    "aliases": _aliases,
    "request": {"defaults": _body_fields, "force": _body_fields, "strip": _field_names},
}
MODEL_REQUIRED = ("id", "model_file")


# --- loading ----------------------------------------------------------------------------------


@dataclass
class LoadedYaml:
    data: dict[str, Any]
    lines: dict[str, int]  # dotted key -> 1-based line
    file: Path

    def line_of(self, key: str) -> int | None:
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition(".")[0]
        return None

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.file, self.line_of(key) if key else None, key, message)


# libyaml's parser when PyYAML was built with it (its wheels are): the same nodes, with their
# lines, ~5x faster than the pure-Python one. That matters because the model configs are
# re-read on every switch, by the proxy and the lifecycle worker both.
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(file: Path) -> LoadedYaml:
    """Parse a YAML mapping, remembering the line of every key. An empty file is an empty
    mapping; duplicate keys are errors (PyYAML would silently keep the last one)."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(file, None, None, f"not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ConfigError(file, None, None, f"cannot read: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=_COMPOSER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(file, mark.line + 1 if mark else None, None,
                          f"invalid YAML: {problem}") from None
    lines: dict[str, int] = {}
    if node is None:
        return LoadedYaml({}, lines, file)
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(file, node.start_mark.line + 1, None,
                          "expected a mapping of keys to values at the top level")
    loader = yaml.SafeLoader("")
    try:
        data = _construct(loader, node, "", lines, file)
    finally:
        loader.dispose()
    return LoadedYaml(data, lines, file)


def _construct(loader: yaml.SafeLoader, node: yaml.Node, prefix: str, lines: dict[str, int],
               file: Path) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(file, key_node.start_mark.line + 1, prefix or None,
                                  "keys must be plain names")
            key = key_node.value
            dotted = f"{prefix}.{key}" if prefix else key
            if key in out:
                raise ConfigError(file, key_node.start_mark.line + 1, dotted,
                                  "key appears twice in the same mapping")
            lines[dotted] = key_node.start_mark.line + 1
            out[key] = _construct(loader, value_node, dotted, lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, prefix, lines, file) for item in node.value]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise ConfigError(file, node.start_mark.line + 1, prefix or None, str(e)) from None


def validate(doc: LoadedYaml, schema: dict[str, Any], prefix: str = "",
             data: dict[str, Any] | None = None) -> None:
    data = doc.data if data is None else data
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        rule = schema.get(key)
        if rule is None:
            raise doc.error(dotted, f"unknown key{_did_you_mean(key, schema)}")
        if isinstance(rule, dict):
            if not isinstance(value, dict):
                raise doc.error(dotted, f"expected a mapping, got {value!r}")
            validate(doc, rule, dotted, value)
        elif (message := rule(value)) is not None:
            raise doc.error(dotted, message)


def _did_you_mean(key: str, schema: dict[str, Any]) -> str:
    from rapidfuzz import fuzz, process

    best = process.extractOne(key, list(schema), scorer=fuzz.ratio, score_cutoff=70)
    known = ", ".join(schema)
    return f" (did you mean {best[0]!r}?)" if best else f" (known keys: {known})"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = _copy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = _copy(value)
    return out


def _copy(value: Any) -> Any:
    """A deep copy of plain YAML data (dicts, lists, scalars): what copy.deepcopy does, at a
    fifth of the cost, which matters when discovery merges a config for hundreds of files."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@dataclass
class GlobalConfig:
    """The merged global configuration (defaults + config/default.yaml)."""

    data: dict[str, Any]
    file: Path
    exists: bool

    def section(self, name: str) -> dict[str, Any]:
        return self.data[name]


def load_global(file: Path) -> GlobalConfig:
    """Defaults merged with the global file. Raises ConfigError on any problem: the daemon
    refuses to start on a broken global config rather than guess."""
    if not file.exists():
        return GlobalConfig(copy.deepcopy(DEFAULTS), file, exists=False)
    doc = load_yaml(file)
    validate(doc, GLOBAL_SCHEMA)
    merged = deep_merge(DEFAULTS, doc.data)
    daemon = merged["daemon"]
    if not daemon["allow_remote"] and not is_loopback(daemon["host"]):
        raise doc.error("daemon.host", (
            f"{daemon['host']!r} is not a loopback address; llmctld has no authentication, so "
            "listening beyond this machine needs `daemon.allow_remote: true`"))
    if daemon["default_model"] is not None and not MODEL_ID_RE.fullmatch(daemon["default_model"]):
        raise doc.error("daemon.default_model", f"{daemon['default_model']!r} is not a model id")
    try:
        model_workers(merged)
    except ValueError as e:
        raise doc.error("llama.workers", str(e)) from None
    return GlobalConfig(merged, file, exists=True)


def load_model_file(file: Path, required: tuple[str, ...] = MODEL_REQUIRED,
                    ) -> tuple[LoadedYaml, dict[str, Any]]:
    """Validate one model's config.yaml; returns the document and its own (unmerged) data.
    Discovery passes `required=()` where it can derive `id` and `model_file` from the GGUF
    beside the file."""
    doc = load_yaml(file)
    validate(doc, MODEL_SCHEMA)
    for key in required:
        if key not in doc.data:
            raise ConfigError(file, 1, key, f"missing required key {key!r} (at the top level)")
    model_id = doc.data.get("id")
    if model_id is None:
        return doc, doc.data
    if not isinstance(model_id, str) or not MODEL_ID_RE.fullmatch(model_id):
        raise doc.error("id", (
            f"{model_id!r} is not a valid id: use letters, digits, '.', '_', '+' or '-' "
            "(max 128), starting with a letter or digit"))
    if model_id in doc.data.get("aliases", []):
        raise doc.error("aliases", f"{model_id!r} is this model's id already; list other names")
    return doc, doc.data


def merge_model(global_cfg: GlobalConfig, model_data: dict[str, Any],
                derived: dict[str, Any] | None = None) -> dict[str, Any]:
    """The effective configuration of one model: global settings, then what discovery derived
    from the GGUF file (`derived`, e.g. pi.model.contextWindow), then the model's own `llama`
    `cache` and `pi` sections merged on top, plus its identity keys."""
    own: dict[str, Any] = {k: model_data[k] for k in ("llama", "cache", "pi") if k in model_data}
    merged = deep_merge(global_cfg.data, deep_merge(derived, own) if derived else own)
    merged["id"] = model_data["id"]
    merged["name"] = model_data.get("name", model_data["id"])
    merged["model_file"] = model_data["model_file"]
    for key in ("description", "mmproj_file", "draft_model_file"):
        if key in model_data:
            merged[key] = model_data[key]
    merged["idle_unload"] = model_data.get("idle_unload", global_cfg.data["daemon"]["idle_unload"])
    merged["aliases"] = list(model_data.get("aliases", []))
    merged["request"] = {"defaults": {}, "force": {}, "strip": [],
                         **copy.deepcopy(model_data.get("request", {}))}
    return merged


def idle_unload_seconds(model_config: dict[str, Any]) -> float | None:
    """How long a model may sit idle before it is unloaded; None: never (0 is never too)."""
    return parse_duration(model_config.get("idle_unload")) or None


def rpc_check_seconds(global_cfg: GlobalConfig) -> float:
    return parse_duration(global_cfg.data["daemon"]["rpc_check_interval"]) or 5.0


def queue_timeout_seconds(global_cfg: GlobalConfig) -> float:
    return parse_duration(global_cfg.data["daemon"]["queue_timeout"]) or 0.0
