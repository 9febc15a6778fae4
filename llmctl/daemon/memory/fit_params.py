"""llama.cpp's own memory estimator, `llama-fit-params`, run for one llama-server command line.

It ships beside llama-server in the same build (the same model loader, the same accounting)
and parses the same arguments, but only those that shape memory: measured on b11434, every
server-only flag llmctl passes is refused with "error: invalid argument" and exit 1 (--host,
--port, --alias, --metrics, --slots, --reasoning-format, --no-ui, --embeddings, --pooling,
--cache-ram, --mmproj, --model-draft, --jinja, --chat-template, --slot-save-path, ...). Which
flags it takes is read from its own --help once per binary (path, size, mtime), so `fit_argv`
keeps exactly those of llama-server's argv, each with its values, and drops the rest.

Two modes, both bounded by a timeout (measured here: 0.01-0.06 s for the tiny test models,
also at -c 1048576; 0.5 s for the 270M starter, whose 262k-token vocabulary is built each run):

- `--fit-print on` prints one line per device and one for `Host`, `name model context
  compute`, in MiB rounded down (integer division: a 0.4 MiB model prints 0). -> `estimate`
- without it, the arguments that would fit free *device* memory: `-c N -ngl N [-ts ...]
  [-ot "..."]`, exit 1 when nothing fits. It adjusts only what the command line leaves unset,
  so `suggest` leaves out -c and -ngl. Without a GPU there is nothing to fit and it echoes
  them: the host side is check.py's arithmetic.

An abort (an unreadable model) makes ggml print a backtrace through gdb, 0.5 s per failure
here; GGML_NO_BACKTRACE turns that off.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from llmctl.daemon.backend.llama_server import clean_env
from llmctl.daemon.memory.needs import FIT_PARAMS, HOST, Needs, Part

NAME = "llama-fit-params"
TIMEOUT = 20.0  # a run is a second at most here; CUDA's start-up on a GPU box adds a few
OUTPUT_CAP = 64 * 1024  # bytes of its stdout/stderr read back (it prints a few lines)
_FLAG = re.compile(r"--?[A-Za-z][\w-]*")
_HELP_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
CONTEXT_FLAGS = ("-c", "--ctx-size")
LAYER_FLAGS = ("-ngl", "--gpu-layers", "--n-gpu-layers")


class FitError(Exception):
    """llama-fit-params could not say (it failed, timed out or printed something else)."""


def find(server_binary: Path) -> Path | None:
    """The llama-fit-params of the same build: beside llama-server as configured, else beside
    the file a symlink points to. A tool found elsewhere could be another build."""
    for directory in dict.fromkeys((server_binary.parent, server_binary.resolve().parent)):
        candidate = directory / NAME
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def accepted_flags(binary: Path) -> frozenset[str]:
    """The flags its --help lists. Raises FitError for a tool that is not the estimator
    llmctl knows (the verdict is kept per binary too: it is not asked again per model)."""
    st = binary.stat()
    flags, error = _accepted_cached(str(binary), st.st_size, st.st_mtime_ns)
    if error is not None:
        raise FitError(error)
    return flags


@lru_cache(maxsize=8)
def _accepted_cached(binary: str, size: int, mtime_ns: int) -> tuple[frozenset[str], str | None]:
    try:
        code, out, err = _run([binary, "--help"], TIMEOUT)
    except FitError as e:
        return frozenset(), str(e)
    flags = frozenset(_HELP_FLAG.findall(out + err))
    if "--fit-print" not in flags:
        return flags, (f"{binary} --help lists no --fit-print (exit {code}): not the "
                       "llama-fit-params llmctl knows")
    return flags, None


def groups(args: list[str]) -> list[list[str]]:
    """Arguments as [flag, value...] groups. A value is whatever does not look like a flag
    (`-1` and paths do not), which is how llama.cpp's options read too: none takes a value
    spelled like a flag."""
    out: list[list[str]] = []
    for arg in args:
        if _FLAG.fullmatch(arg) or not out:
            out.append([arg])
        else:
            out[-1].append(arg)
    return out


def fit_argv(binary: Path, server_argv: list[str], accepted: frozenset[str],
             leave_out: tuple[str, ...] = ()) -> list[str]:
    """llama-server's argv as llama-fit-params takes it: its binary first, then only the flag
    groups it accepts, without those in `leave_out`."""
    kept = [g for g in groups(server_argv[1:]) if g[0] in accepted and g[0] not in leave_out]
    return [str(binary), *(arg for group in kept for arg in group)]


def estimate(argv: list[str], ctx_size: int | None, timeout: float = TIMEOUT) -> Needs:
    """The figures for one fit argv (from fit_argv). Raises FitError."""
    code, out, err = _run([*argv, "--fit-print", "on"], timeout)
    if code != 0:
        raise FitError(f"{NAME} exited with {code}: {_reason(err)}")
    parts: dict[str, Part] = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4 and all(w.isdigit() for w in words[-3:]):
            weights, context, compute = (int(w) for w in words[-3:])
            parts[" ".join(words[:-3])] = Part(weights, context, compute)
    if HOST not in parts:
        raise FitError(f"{NAME} printed no Host line: {_reason(out)}")
    return Needs(FIT_PARAMS, parts, ctx_size)


def suggest(argv: list[str], timeout: float = TIMEOUT) -> dict[str, str] | None:
    """What llama-fit-params would set to fit free device memory ({"-c": "8192", "-ngl":
    "20", ...}), for a fit argv made without -c and -ngl; None when nothing fits. FitError."""
    code, out, err = _run(argv, timeout)
    if code != 0:
        if "failed to fit" in err:
            return None
        raise FitError(f"{NAME} exited with {code}: {_reason(err)}")
    found = groups(out.split())
    return {g[0]: " ".join(g[1:]).strip('"') for g in found if len(g) > 1}


def _run(argv: list[str], timeout: float) -> tuple[int, str, str]:
    env = clean_env(os.environ)
    env["GGML_NO_BACKTRACE"] = "1"
    # files, not pipes: the output is read back capped, and nothing can block on a full pipe
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            code = subprocess.run(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                  env=env, timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            raise FitError(f"{NAME} did not answer within {timeout:.0f}s") from None
        except OSError as e:
            raise FitError(f"cannot run {argv[0]}: {e.strerror}") from None
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read(OUTPUT_CAP).decode("utf-8", "replace"))
    return code, texts[0], texts[1]


def _reason(text: str) -> str:
    """The line that says why, from a run's log: its error line, else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        if "error" in line.lower() or " E " in line or "what():" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"
