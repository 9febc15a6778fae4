"""llama-server's slot API over HTTP (measured on build b11434):

    GET  /slots                          [{"id", "n_ctx", "is_processing", "n_prompt_tokens"?, ...}]
                                         (n_prompt_tokens only once a slot has served a task)
    POST /slots/{id}?action=save         {"filename"} -> {"n_saved", "n_written", "timings"}
    POST /slots/{id}?action=restore      {"filename"} -> {"n_restored", "n_read", "timings"}

The file lands in (is read from) llama-server's --slot-save-path; names with a path are
refused (400). A restore of a file that does not fit answers 400; with a projector loaded
every action answers 501. Every call takes a deadline: the caller's budget for the whole
save or restore, never more.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

MAX_ANSWER = 1024 * 1024  # the answers are small; a huge one is not llama-server's


class SlotError(Exception):
    """A slot call that failed; the message says how."""


def _call(host: str, port: int, method: str, path: str, body: dict[str, Any] | None,
          timeout: float) -> Any:
    """One HTTP/1.1 exchange on a plain socket (the lifecycle worker holds no http.client:
    see process.health), `Connection: close`, within `timeout` seconds in all."""
    if timeout <= 0:
        raise SlotError(f"{method} {path}: out of time")
    deadline = time.monotonic() + timeout
    payload = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    raw = b""
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout) as sock:
            sock.sendall(head.encode() + payload)
            while len(raw) <= MAX_ANSWER:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SlotError(f"{method} {path}: no answer within {timeout:.1f}s")
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    break
                raw += data
    except TimeoutError:
        raise SlotError(f"{method} {path}: no answer within {timeout:.1f}s") from None
    except OSError as e:
        raise SlotError(f"{method} {path}: {e}") from None
    status, text = _parse(raw)
    if status is None:
        raise SlotError(f"{method} {path}: not an HTTP answer")
    try:
        decoded = json.loads(text)
    except ValueError:
        raise SlotError(f"{method} {path}: HTTP {status}, not JSON") from None
    if status != 200:
        error = decoded.get("error") if isinstance(decoded, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise SlotError(f"{method} {path}: HTTP {status}: {message or text[:200]!r}")
    return decoded


def _parse(raw: bytes) -> tuple[int | None, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].split(None, 2)
    if len(line) < 2 or not line[0].startswith(b"HTTP/") or not line[1].isdigit():
        return None, b""
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0] or b"0", 16)
            except ValueError:
                return None, b""
            if not size:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return int(line[1]), body


def held_tokens(host: str, port: int, timeout: float) -> dict[int, int]:
    """Slot id -> the tokens its cache holds (0 for a slot that never served)."""
    slots = _call(host, port, "GET", "/slots", None, timeout)
    if not isinstance(slots, list):
        raise SlotError("GET /slots: not a list")
    out: dict[int, int] = {}
    for slot in slots:
        if isinstance(slot, dict) and isinstance(slot.get("id"), int):
            tokens = slot.get("n_prompt_tokens")
            out[slot["id"]] = tokens if isinstance(tokens, int) and tokens > 0 else 0
    return out


def save(host: str, port: int, slot: int, filename: str, timeout: float) -> tuple[int, int]:
    """(tokens saved, bytes written)."""
    answer = _call(host, port, "POST", f"/slots/{slot}?action=save", {"filename": filename},
                   timeout)
    return int(answer.get("n_saved") or 0), int(answer.get("n_written") or 0)


def restore(host: str, port: int, slot: int, filename: str, timeout: float) -> tuple[int, int]:
    """(tokens restored, bytes read)."""
    answer = _call(host, port, "POST", f"/slots/{slot}?action=restore",
                   {"filename": filename}, timeout)
    return int(answer.get("n_restored") or 0), int(answer.get("n_read") or 0)
