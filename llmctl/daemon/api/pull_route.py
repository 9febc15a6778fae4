"""`POST /pull`: `llmctl pull` through the daemon, with its events as NDJSON (for the Pi
extension's `/llm pull <repo>`).

The download runs in a child process (`llmctl pull --json`), not in the proxy worker: hashing a
model file and huggingface_hub's blocking I/O would stall every other request of this gevent
worker, and a child that fails or is killed takes nothing of the daemon with it. Its events are
relayed line by line as they come; when the client goes away, the child is stopped (its partial
file stays in the Hugging Face cache, so the next pull of the same file resumes it). The model
appears in the catalog once the child has registered it (the route re-discovers at the end).

The body is JSON `{"repo": "org/name[:QUANT|FILE]", "id"?: ..., "name"?: ...}`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Request, Response

from llmctl.core.pull import PullError, parse_spec

STOP_GRACE = 5.0  # seconds a child gets to exit after SIGTERM before SIGKILL
STDERR_TAIL = 2000  # characters of a crashed child's stderr worth reporting


def pull_response(request: Request, hub: Any, error: Any) -> Response:
    """The response for one POST /pull; `error(status, code, message)` builds error replies."""
    try:
        body = json.loads(request.get_data() or b"{}")
    except ValueError:
        return error(400, "bad_request", "the body must be JSON: {\"repo\": \"org/name:QUANT\"}")
    spec = body.get("repo") if isinstance(body, dict) else None
    if not isinstance(spec, str):
        return error(400, "bad_request", "name the model to pull: {\"repo\": "
                     "\"org/name[:QUANT|FILE]\"}")
    try:
        parse_spec(spec)
    except PullError as e:
        return error(400, e.code, e.message)
    argv = [sys.executable, "-m", "llmctl.cli.main", "pull", spec, "--json"]
    for key in ("id", "name"):
        if isinstance(body.get(key), str):
            argv += [f"--{key}", body[key]]
    return Response(_relay(argv, hub), mimetype="application/x-ndjson")


def _relay(argv: list[str], hub: Any) -> Iterator[bytes]:
    # the child runs the daemon's own copy of llmctl, wherever it was imported from
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    errors = tempfile.TemporaryFile()  # a file, not a pipe nobody reads while stdout streams
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors,
                             stdin=subprocess.DEVNULL, env=env)
    assert child.stdout is not None
    last: dict[str, Any] = {}
    try:
        for line in child.stdout:
            try:
                last = json.loads(line)
            except ValueError:
                continue  # not an event (a library printing to stdout): not for the client
            yield line if line.endswith(b"\n") else line + b"\n"
        code = child.wait()
        errors.seek(0)
        stderr = errors.read().decode("utf-8", "replace")
        if last.get("event") not in ("done", "error"):
            yield (json.dumps({"event": "error", "code": "pull_failed", "message": (
                f"llmctl pull exited with {code} before it finished: "
                f"{stderr[-STDERR_TAIL:].strip() or 'no message'}")}) + "\n").encode()
        if last.get("event") == "done":
            hub.config.refresh()
    finally:
        if child.poll() is None:  # the client went away mid-download
            child.terminate()
            try:
                child.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        child.stdout.close()
        errors.close()
