"""state.json: what a restarted worker or daemon needs to carry on.

Written by the lifecycle worker only, atomically (temp file in the same directory, fsync,
rename), mode 0600. Readers tolerate a missing, torn or foreign file: they get None and a
reason, never an exception.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

BACKEND_STATES = ("stopped", "starting", "ready", "stopping", "failed")


def empty_backend() -> dict[str, Any]:
    return {
        "state": "stopped", "model": None, "pid": None, "create_time": None, "cmdline": None,
        "host": None, "port": None, "model_path": None, "started_at": None, "ready_at": None,
        "load_seconds": None, "progress": None, "error": None, "exit_code": None,
        "log_tail": [], "generation": 0,
    }


def read_state(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror}"
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, f"{path} is corrupt (not JSON); ignoring it"
    if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION or not isinstance(
            data.get("backend"), dict):
        return None, f"{path} has an unknown layout; ignoring it"
    backend = empty_backend()
    backend.update({k: v for k, v in data["backend"].items() if k in backend})
    if backend["state"] not in BACKEND_STATES:
        return None, f"{path} names an unknown backend state; ignoring it"
    data["backend"] = backend
    return data, None


def write_state(path: Path, backend: dict[str, Any], daemon: dict[str, Any]) -> None:
    data = {"version": SCHEMA_VERSION, "daemon": daemon, "backend": backend}
    payload = json.dumps(data, indent=1, sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
