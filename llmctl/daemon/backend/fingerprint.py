"""Fingerprints: a short, stable digest of everything that decides whether something computed
for one llama-server launch is still valid for another — a saved KV cache (kv_store), a memory
estimate (memory fit). Two launches with the same fingerprint read the same weights with the
same settings under the same build.

A fingerprint covers the model's files by identity (resolved path, size, mtime: a re-download
or an edit in place changes it), the llama-server binary the same way, and the launch's
arguments minus those that cannot change the result (`ignore`: where it listens, its logging,
its UI). Callers decide what to ignore; the argv itself comes from llama_server.build_argv, so
a fingerprint can never disagree with what is launched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def file_identity(path: Path | str) -> dict[str, Any]:
    """A file by what would change if it were replaced: resolved path, size, mtime."""
    resolved = Path(path).resolve()
    try:
        st = os.stat(resolved)
    except OSError:
        return {"path": str(resolved), "missing": True}
    return {"path": str(resolved), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def relevant_args(argv: list[str], ignore: dict[str, int]) -> list[str]:
    """argv[1:] without the flags in `ignore` (flag -> how many values follow it). Paths
    among the values stay: a different projector or draft model is a different launch."""
    out: list[str] = []
    skip = 0
    for arg in argv[1:]:
        if skip:
            skip -= 1
            continue
        if arg in ignore:
            skip = ignore[arg]
            continue
        out.append(arg)
    return out


def digest(parts: Any) -> str:
    """16 hex digits of a canonical JSON rendering of `parts`."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(argv: list[str], files: Iterable[Path | str], ignore: dict[str, int],
                **extra: Any) -> str:
    """The fingerprint of one launch: the binary (argv[0]) and `files` by identity, the
    relevant arguments, and whatever else the caller adds (e.g. a format version)."""
    return digest({"binary": file_identity(argv[0]),
                   "files": [file_identity(f) for f in files],
                   "args": relevant_args(argv, ignore), **extra})
