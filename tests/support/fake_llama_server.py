#!/usr/bin/env python3
"""A scripted FAKE llama-server for fault-injection tests (stdlib only).

Launch it exactly like llama-server::

    fake_llama_server.py -m MODEL --host 127.0.0.1 --port 11435 -c 0 -ngl 999 -fa auto \\
        -lm none -ctk q8_0 -ctv q8_0 -np 1 --metrics --slots --reasoning-format deepseek \\
        --alias ID --no-webui

Command line
------------
* ``--help`` prints the verbatim help of a real llama-server (build 11434, CPU;
  ``llama_server_help_b11434.txt`` next to this file) to stdout and exits 0.  With env
  ``FAKE_LLAMA_FLAVOR=old`` it prints an old-style help instead
  (``llama_server_help_old.txt``: bare boolean ``-fa, --flash-attn``, ``--no-mmap``, no
  ``-lm/--load-mode``, ``--slots`` opt-in and no ``--no-slots``).
* The accepted flags, and how many values each takes, are read from that help text, so
  the fake accepts exactly what the emulated binary accepts (checked against the real
  binary for all 413 flags).  Anything else: ``error: invalid argument: X`` on stderr,
  exit 1.  ``--version`` prints a version to stderr, exit 0.
* Never starts without ``-m`` (the real one would start in router mode): exits 1.

Behaviour script = the model file
---------------------------------
* starts with ``GGUF``: default behaviour (a real tiny GGUF works);
* first line is a JSON object: that object is the script; the rest of the file is
  ignored padding, so the file can be made big for read-progress tests (a file that is
  entirely one pretty-printed JSON object also works).  Use :func:`write_fake_model`;
* missing: the port is bound, then ``failed to open GGUF file`` / ``exiting due to model
  loading error`` on stderr and exit 1, like the real one; other content: ``invalid
  magic`` and exit 1.

Script keys (all optional):

``load_seconds`` (0.2)        every route answers 503 ``Loading model`` for this long
                              (after the port is bound), then ``/health`` is 200.
``bind_delay`` (0)            seconds before binding the port (connection refused).
``read_bytes_during_load``    read the whole model file in chunks spread over
                              load_seconds (``/proc/<pid>/io`` rchar grows to the size).
``never_ready``               stay in the loading state (503) forever.
``freeze_at``                 with read_bytes_during_load: stop reading at this fraction of
                              the file (e.g. 0.43) and stay loading forever (a stalled load).
``exit_during_load``          ``{"after": s, "code": 1}``: load-error lines, exit(code).
``ignore_sigterm``            SIGTERM is SIG_IGN for the whole life (SIGKILL still works).
``hang_on_sigterm``           when ready, the first SIGTERM/SIGINT is logged and changes
                              nothing (the real one now and then hangs like this when a
                              stream's client has just disconnected); the second exits 1.
``stream_chunks`` (8)         content chunks of a streamed completion (``max_tokens`` wins).
``chunk_interval`` (0.01)     seconds between streamed chunks.
``crash_after_chunks``        SIGKILL itself after N streamed content chunks.
``error_after_chunks``        after N chunks send ``data: {"error":...}``, end without [DONE].
``crash_on_request``          a non-streaming completion SIGKILLs the process first.
``hang_nonstream_on_sigterm`` after SIGTERM, an in-flight non-streaming completion never
                              answers and keeps the process alive until its client
                              disconnects (then exit 0) - the real bug.  Combine it with
                              slow_response_seconds so that a request is in flight.
``hang_stream_on_sigterm``    same for in-flight streams: after SIGTERM no more chunks, no
                              [DONE], connection kept open; the process lives until the
                              client disconnects, or until ``stream_hang_seconds`` (30)
                              pass: then ``:`` is sent, the connection closed and the
                              process exits 0 (what the real build 11434 does).
``close_after_response``      close every kept-alive connection after the response,
                              without sending ``Connection: close``.
``slow_response_seconds``     non-streaming completions wait this long before answering.
``n_ctx_train`` (4096)        context length "of the model" (used for ``-c 0``).
``tokens``                    strings used (cycled) as the generated tokens.
``tool_use``                  ``{"name": N, "input": {...}}``: ``/v1/messages`` (Anthropic)
                              answers with a call of tool N when the request offers it,
                              which a tiny random model cannot be made to produce.
``tool_call``                 ``{"name": ..., "arguments": {...}}``: a chat completion whose
                              request has ``tools`` and whose last message is not a tool
                              result calls that tool (finish_reason ``tool_calls``; streamed
                              as a name delta, then the arguments' JSON in two pieces).
``slot_tokens``               ``GET /slots`` reports this many tokens held by every slot
                              (``n_prompt_tokens``), as after a served prompt.
``slot_save_seconds`` (0)     ``POST /slots/N?action=save`` (needs ``--slot-save-path``)
                              writes half of ``slot_save_bytes`` (4096) to the file, waits
                              this long (cut short by SIGTERM: the process exits with the
                              file half written), writes the rest and answers like the real
                              one; ``action=restore`` reads the file back.
``health_stall_file``         a file path: while that file exists and holds a Unix time
                              still to come, ``/health`` answers only at that time (each
                              probe waits; other routes are not slowed), like a busy server
                              on a loaded machine after a daemon restart.
``chunk_size_format`` ("%x")  how streamed chunks write their size (a %-format of it):
                              e.g. ``"0x%x"`` or ``"+%x"``, framing a strict parser refuses
                              and Python's ``int(x, 16)`` takes; the last chunk stays ``0``.
``record_requests``           a file path: each completion request body is appended to it
                              as one JSON line (to check what llama-server was sent).

Signals, like llama-server: during the load SIGTERM/SIGINT kill the process at once (no
handler: exit status -15).  When ready the first SIGTERM/SIGINT stops generation (streams
are cut without ``[DONE]``) and exits 0; a second one prints ``Received second interrupt,
terminating immediately.`` and exits 1.

HTTP: HTTP/1.1 keep-alive (except: 503 while loading and 4xx errors carry ``Connection:
close`` like the real one); SSE streams use chunked transfer encoding; chunked request
bodies are accepted.  Routes: ``/health``, ``/v1/health``, ``/models``, ``/v1/models``,
``/v1/chat/completions``, ``/chat/completions``, ``/v1/completions``, ``/completions``,
``/completion``, ``/v1/messages`` (Anthropic; text, or the scripted ``tool_use``, streamed
or not), ``/props``, ``/slots`` (501 when disabled), ``/metrics`` (501 without
``--metrics``), and ``/v1/echo`` (any method; returns method, path, query, headers and
body as JSON).  Unknown route: 404 JSON.  ``--api-key K`` is
honoured (401 except on /health and /models).  ``--log-file F`` gets a copy of the log.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = pathlib.Path(__file__).resolve().parent
HELP_NEW_FILE = HERE / "llama_server_help_b11434.txt"
HELP_OLD_FILE = HERE / "llama_server_help_old.txt"
FAKE_VERSION = "version: 11434 (fake0000)\nbuilt with fake_llama_server.py (Python) for x86_64-linux-gnu\n"
BUILD_INFO = "b11434-fake0000"
T0 = time.monotonic()

__all__ = ["write_fake_model", "parse_help_options", "main"]


# --------------------------------------------------------------------------------------
# flavour, help text, argument parsing
# --------------------------------------------------------------------------------------


def flavor() -> str:
    return "old" if os.environ.get("FAKE_LLAMA_FLAVOR", "").strip().lower() == "old" else "new"


def help_text() -> str:
    return (HELP_OLD_FILE if flavor() == "old" else HELP_NEW_FILE).read_text(encoding="utf-8")


_FLAG = r"--?[A-Za-z0-9][\w.-]*"
_OPT_LINE = re.compile(rf"((?:{_FLAG},\s*)*{_FLAG})((?: [^ ]+)*)")


def parse_help_options(text: str) -> dict[str, int]:
    """Map every flag of a llama-server help text to the number of values it takes.

    Option lines look like ``-fa,   --flash-attn [on|off|auto]     help...``: flags separated
    by commas, then 0-2 value hints separated by single spaces, then padding or a newline.
    """
    table: dict[str, int] = {}
    for line in text.splitlines():
        m = _OPT_LINE.match(line)
        if not m:
            continue
        flags = [f for f in re.split(r",\s*", m.group(1)) if f]
        hints: list[str] = []
        for tok in m.group(2).split():
            # "<tensor name pattern>=<buffer type>,..." is one hint containing spaces
            if hints and hints[-1].count("<") > hints[-1].count(">"):
                hints[-1] += " " + tok
            else:
                hints.append(tok)
        for f in flags:
            table[f] = min(len(hints), 2)
    return table


class ArgError(Exception):
    pass


def parse_args(argv: list[str]) -> dict:
    table = parse_help_options(help_text())
    opts: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            arg = arg.replace("_", "-")  # like llama.cpp
        if arg not in table:
            raise ArgError(f"error: invalid argument: {arg}")
        n = table[arg]
        vals = argv[i + 1 : i + 1 + n]
        if len(vals) < n:
            raise ArgError(
                f'error while handling argument "{arg}": expected value for argument\n\n\n'
                f"usage:\n{arg}\n\nto show complete usage, run with -h"
            )
        if n == 1 and arg in ("-fa", "--flash-attn") and vals[0] not in ("on", "off", "auto"):
            # the real handler throws while parsing, before later arguments are looked at
            raise ArgError(
                f"error while handling argument \"{arg}\": error: unknown value for --flash-attn: "
                f"'{vals[0]}'\n\n\nusage:\n-fa,   --flash-attn [on|off|auto]       set Flash "
                "Attention use ('on', 'off', or 'auto', default: 'auto')\n"
                "                                        (env: LLAMA_ARG_FLASH_ATTN)\n\n\n"
                "to show complete usage, run with -h"
            )
        opts[arg] = vals[0] if n == 1 else (vals if n == 2 else True)
        i += 1 + n
    return opts


def opt(opts: dict, *names, default=None):
    for n in names:
        if n in opts:
            return opts[n]
    return default


# --------------------------------------------------------------------------------------
# logging (stderr, flushed per line; new flavour uses llama.cpp's "M.SS.mmm.uuu L " prefix)
# --------------------------------------------------------------------------------------

_log_lock = threading.Lock()
_log_file = None


def log(msg: str, level: str = "I") -> None:
    if flavor() == "new" and msg:
        us = int((time.monotonic() - T0) * 1e6)
        m, rest = divmod(us, 60_000_000)
        s, rest = divmod(rest, 1_000_000)
        ms, us_ = divmod(rest, 1000)
        line = f"{m}.{s:02d}.{ms:03d}.{us_:03d} {level} {msg}"
    else:
        line = msg
    with _log_lock:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:
            pass
        if _log_file is not None:
            try:
                _log_file.write(line + "\n")
                _log_file.flush()
            except Exception:
                pass


def srv(func: str, msg: str, level: str = "I") -> None:
    log(f"srv  {func[:12]:>12}: {msg}", level)  # llama-server's SRV_INF format


def die(code: int) -> None:
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(code)


# --------------------------------------------------------------------------------------
# model file / script
# --------------------------------------------------------------------------------------


def write_fake_model(path, script: dict | None = None, *, size: int = 0) -> pathlib.Path:
    """Write a fake model file: first line = JSON script, then padding up to ``size`` bytes.

    The padding is a sparse hole (reads as zeros, costs no disk space).
    """
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(script or {}) + "\n").encode()
    with open(p, "wb") as f:
        f.write(data)
        if size > len(data):
            f.truncate(size)
    return p


def _gguf_context_length(path: str):
    """Best-effort read of ``<arch>.context_length`` from a GGUF header."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    fmts = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return None
            version, _n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
            if version < 2:
                return None

            def rstr():
                (n,) = struct.unpack("<Q", f.read(8))
                return f.read(n).decode("utf-8", "replace")

            def rval(t):
                if t == 8:
                    return rstr()
                if t == 9:
                    (et,) = struct.unpack("<I", f.read(4))
                    (cnt,) = struct.unpack("<Q", f.read(8))
                    if et in sizes:
                        f.seek(sizes[et] * cnt, 1)
                    else:
                        for _ in range(cnt):
                            rval(et)
                    return None
                return struct.unpack(fmts[t], f.read(sizes[t]))[0]

            for _ in range(min(n_kv, 10000)):
                key = rstr()
                (t,) = struct.unpack("<I", f.read(4))
                val = rval(t)
                if key.endswith(".context_length") and isinstance(val, int):
                    return val
    except Exception:
        return None
    return None


def load_script(path: str):
    """Return (kind, script); kind is 'gguf', 'script', 'missing' or 'invalid'."""
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return "gguf", {}
            f.seek(0)
            first = f.readline(16 * 1024 * 1024)
    except OSError:
        return "missing", None
    candidates = [first]
    if _file_size(path) <= 16 * 1024 * 1024:
        candidates.append(pathlib.Path(path).read_bytes())  # a pretty-printed JSON file
    for data in candidates:
        try:
            obj = json.loads(data.decode("utf-8"))
        except ValueError:
            continue
        if isinstance(obj, dict):
            return "script", obj
    return "invalid", None


# --------------------------------------------------------------------------------------
# server state
# --------------------------------------------------------------------------------------


class State:
    def __init__(self):
        self.ready = False
        self.stopping = False  # first SIGTERM/SIGINT received while ready
        self.script: dict = {}
        self.model_path = ""
        self.model_id = ""
        self.n_ctx = 4096
        self.n_ctx_train = 4096
        self.n_parallel = 1
        self.metrics = False
        self.slots_enabled = True
        self.slot_save_path: str | None = None
        self.api_keys: list[str] = []
        self.lock = threading.Lock()
        self.slot_busy: list[bool] = []
        self.slot_sem = threading.Semaphore(1)
        self.nonstream_inflight = 0
        self.streams_inflight = 0
        self.hanging = 0  # requests keeping the process alive after SIGTERM
        self.deferred = 0
        self.task_id = 0
        self.prompt_tokens_total = 0
        self.predicted_tokens_total = 0
        self.n_decode_total = 0
        self.n_tokens_max = 0
        self.created = int(time.time())


STATE = State()
_wake = threading.Condition()


def _notify():
    with _wake:
        _wake.notify_all()


def _error_body(code: int, message: str, etype: str, **extra) -> dict:
    err = {"code": code, "message": message, "type": etype}
    err.update(extra)
    return {"error": err}


LOADING_BODY = {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}
PUBLIC_PATHS = {"/health", "/v1/health", "/models", "/v1/models", "/api/tags"}
COMPLETION_PATHS = {"/v1/chat/completions", "/chat/completions", "/v1/completions",
                    "/completions", "/completion"}


def _timings(n_prompt: int, n_pred: int) -> dict:
    return {"cache_n": 0, "prompt_n": n_prompt, "prompt_ms": n_prompt * 1.0,
            "prompt_per_token_ms": 1.0, "prompt_per_second": 1000.0,
            "predicted_n": n_pred, "predicted_ms": n_pred * 10.0,
            "predicted_per_token_ms": 10.0, "predicted_per_second": 100.0}


def _sleep_unless_stopping(seconds: float) -> None:
    end = time.monotonic() + seconds
    while not STATE.stopping:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.02, left))


def _stall_health(marker: str | None) -> None:
    """The ``health_stall_file`` script key: wait until the time the file names."""
    if not marker:
        return
    try:
        until = float(pathlib.Path(marker).read_text().strip() or 0)
    except (OSError, ValueError):
        return
    while not STATE.stopping and time.time() < until:
        time.sleep(min(0.05, max(0.0, until - time.time())))


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llama.cpp"
    sys_version = ""

    def version_string(self):
        return "llama.cpp"

    def log_message(self, format, *args):  # noqa: A002 - silence the default access log
        pass

    # ---- helpers -------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, up to the empty line
                        t = self.rfile.readline(65537)
                        if not t or t in (b"\r\n", b"\n"):
                            break
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after the chunk data
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _log_request(self, status: int):
        srv("log_server_r", f"request: {self.command} {self.path} {self.client_address[0]} {status}")

    def _after_response(self):
        if STATE.script.get("close_after_response"):
            self.close_connection = True  # close without having sent "Connection: close"

    def _send_bytes(self, status: int, body: bytes, ctype: str, close: bool = False):
        self.send_response(status)
        self.send_header("Access-Control-Allow-Origin", "")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")  # also sets self.close_connection
        else:
            self.send_header("Keep-Alive", "timeout=5, max=100")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
        self._log_request(status)
        self._after_response()

    def _send_json(self, status: int, obj, close: bool | None = None):
        body = json.dumps(obj, separators=(",", ":")).encode()
        if close is None:
            close = 400 <= status < 500 and status != 401
        self._send_bytes(status, body, "application/json; charset=utf-8", close)

    # ---- dispatch --------------------------------------------------------------------

    def _dispatch(self):
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

    def _route(self):
        url = urlsplit(self.path)
        path = url.path
        body = self._read_body()

        if not STATE.ready:
            return self._send_json(503, LOADING_BODY, close=True)
        if path == "/v1/echo":
            return self._echo(url, body)

        if STATE.api_keys and path not in PUBLIC_PATHS and self.command != "OPTIONS":
            key = self.headers.get("Authorization") or self.headers.get("X-Api-Key") or ""
            if key.startswith("Bearer "):
                key = key[len("Bearer "):]
            if key not in STATE.api_keys:
                srv("operator()", "unauthorized: Invalid API Key", "W")
                return self._send_json(401, {"error": {"message": "Invalid API Key",
                                                       "type": "authentication_error", "code": 401}})

        get = self.command in ("GET", "HEAD")
        if path in ("/health", "/v1/health") and get:
            _stall_health(STATE.script.get("health_stall_file"))
            return self._send_json(200, {"status": "ok"})
        if path in ("/models", "/v1/models") and get:
            return self._send_json(200, self._models())
        if path == "/props" and get:
            return self._send_json(200, self._props())
        if path == "/slots" and get:
            if not STATE.slots_enabled:
                return self._send_json(501, _error_body(
                    501, "This server does not support slots endpoint. Start it with `--slots`",
                    "not_supported_error"))
            return self._send_json(200, self._slots())
        if path == "/metrics" and get:
            if not STATE.metrics:
                return self._send_json(501, _error_body(
                    501, "This server does not support metrics endpoint. Start it with `--metrics`",
                    "not_supported_error"))
            return self._send_bytes(200, self._metrics().encode(), "text/plain; version=0.0.4")
        if path.startswith("/slots/") and self.command == "POST":
            return self._slot_action(path, url.query, body)
        if path in COMPLETION_PATHS and self.command == "POST":
            return self._completion(path, body)
        if path == "/v1/messages" and self.command == "POST":
            return self._messages(body)
        return self._send_json(404, {"error": {"message": "File Not Found", "type": "not_found_error",
                                               "code": 404}})

    # ---- simple routes ---------------------------------------------------------------

    def _echo(self, url, body: bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            headers[k] = v if k not in headers else headers[k] + ", " + v
        self._send_json(200, {
            "method": self.command,
            "path": url.path,
            "raw_path": self.path,
            "query": url.query,
            "args": {k: (v if len(v) > 1 else v[0])
                     for k, v in parse_qs(url.query, keep_blank_values=True).items()},
            "headers": headers,
            "header_list": [[k, v] for k, v in self.headers.items()],
            "http_version": self.request_version,
            "body": text,
            "body_b64": base64.b64encode(body).decode(),
            "body_length": len(body),
            "json": parsed,
            "ready": STATE.ready,
            "pid": os.getpid(),
        })

    def _models(self):
        mid = STATE.model_id
        return {
            "models": [{"name": mid, "model": mid, "modified_at": "", "size": "", "digest": "",
                        "type": "model", "description": "", "tags": [""],
                        "capabilities": ["completion"], "parameters": "",
                        "details": {"parent_model": "", "format": "gguf", "family": "",
                                    "families": [""], "parameter_size": "",
                                    "quantization_level": ""}}],
            "object": "list",
            "data": [{"id": mid, "aliases": [mid], "tags": [], "object": "model",
                      "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
                      "created": STATE.created, "owned_by": "llamacpp",
                      "meta": {"vocab_type": 1, "n_vocab": 259, "n_ctx": STATE.n_ctx,
                               "n_ctx_train": STATE.n_ctx_train, "n_embd": 64, "n_params": 0,
                               "size": _file_size(STATE.model_path), "ftype": "all F32"}}],
        }

    def _props(self):
        per_slot = STATE.n_ctx // max(1, STATE.n_parallel)
        return {
            "default_generation_settings": {"params": {"temperature": 0.8, "top_k": 40,
                                                       "max_tokens": -1, "n_predict": -1},
                                            "n_ctx": per_slot},
            "total_slots": STATE.n_parallel,
            "model_alias": STATE.model_id,
            "model_ftype": "all F32",
            "model_path": STATE.model_path,
            "modalities": {"vision": False, "video": False, "audio": False},
            "endpoint_slots": STATE.slots_enabled,
            "endpoint_props": False,
            "endpoint_metrics": STATE.metrics,
            "chat_template": "",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "build_info": BUILD_INFO,
            "is_sleeping": False,
        }

    def _slots(self):
        per_slot = STATE.n_ctx // max(1, STATE.n_parallel)
        with STATE.lock:
            busy = list(STATE.slot_busy)
        held = {"n_prompt_tokens": int(STATE.script["slot_tokens"])} \
            if STATE.script.get("slot_tokens") else {}
        return [{"id": i, "n_ctx": per_slot, "speculative": False, "is_processing": b,
                 "id_task": -1, "params": {"n_predict": -1}, **held,
                 "next_token": [{"has_next_token": b, "has_new_line": False, "n_remain": -1,
                                 "n_decoded": 0}]}
                for i, b in enumerate(busy)]

    def _slot_action(self, path: str, query: str, body: bytes):
        action = query.partition("action=")[2].split("&")[0]
        name = (json.loads(body or b"{}") or {}).get("filename", "")
        if STATE.slot_save_path is None:
            return self._send_json(501, _error_body(
                501, "This server does not support slots action. Start it with "
                "`--slot-save-path`", "not_supported_error"))
        if not name or "/" in name or name.startswith("."):
            return self._send_json(400, _error_body(400, "Invalid filename",
                                                    "invalid_request_error"))
        file = os.path.join(STATE.slot_save_path, name)
        tokens = int(STATE.script.get("slot_tokens") or 0)
        if action == "save":
            size = int(STATE.script.get("slot_save_bytes") or 4096)
            with open(file, "wb") as f:
                f.write(b"\0" * (size // 2))
                f.flush()
                _sleep_unless_stopping(float(STATE.script.get("slot_save_seconds") or 0))
                if STATE.stopping:
                    return None  # the process is going: the file stays half written
                f.write(b"\0" * (size - size // 2))
            return self._send_json(200, {"id_slot": int(path.rsplit("/", 1)[1]),
                                         "filename": name, "n_saved": tokens,
                                         "n_written": size, "timings": {"save_ms": 1.0}})
        if action == "restore":
            try:
                size = os.path.getsize(file)
            except OSError:
                return self._send_json(400, _error_body(
                    400, "Unable to restore slot", "invalid_request_error"))
            return self._send_json(200, {"id_slot": int(path.rsplit("/", 1)[1]),
                                         "filename": name, "n_restored": tokens,
                                         "n_read": size, "timings": {"restore_ms": 1.0}})
        return self._send_json(400, _error_body(400, "Invalid action", "invalid_request_error"))

    def _metrics(self):
        with STATE.lock:
            processing = sum(STATE.slot_busy)
            deferred = STATE.deferred
            pt, tp = STATE.prompt_tokens_total, STATE.predicted_tokens_total
            nd, nmax = STATE.n_decode_total, STATE.n_tokens_max
        rows = [
            ("prompt_tokens_total", "counter", "Number of prompt tokens processed, excluding cached tokens", pt),
            ("prompt_seconds_total", "counter", "Total time spent processing prompts", pt * 0.001),
            ("tokens_predicted_total", "counter", "Number of generation tokens processed", tp),
            ("tokens_predicted_seconds_total", "counter", "Total time spent generating tokens", tp * 0.01),
            ("n_decode_total", "counter", "Total number of llama_decode() calls, excluding speculative decoding and multimodal decoding", nd),
            ("n_tokens_max", "counter", "Largest observed sequence length (prompt + generation)", nmax),
            ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s", 1000.0 if pt else 0),
            ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s", 100.0 if tp else 0),
            ("requests_processing", "gauge", "Number of requests processing", processing),
            ("requests_deferred", "gauge", "Number of requests deferred", deferred),
            ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call", 1 if nd else 0),
        ]
        out = []
        for name, typ, hlp, val in rows:
            out += [f"# HELP llamacpp:{name} {hlp}", f"# TYPE llamacpp:{name} {typ}",
                    f"llamacpp:{name} {val}"]
        return "\n".join(out) + "\n"

    # ---- completions -----------------------------------------------------------------

    def _completion(self, path: str, body: bytes):
        chat = "chat" in path
        try:
            req = json.loads(body.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except Exception:
            req = None
        if chat:
            msgs = req.get("messages") if req else None
            if not isinstance(msgs, list):
                return self._send_json(400, _error_body(400, "'messages' is required", "invalid_request_error"))
            prompt_text = "".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
        else:
            if not req or "prompt" not in req:
                return self._send_json(400, _error_body(400, "\"prompt\" must be provided", "invalid_request_error"))
            p = req["prompt"]
            prompt_text = p if isinstance(p, str) else json.dumps(p)
        record = STATE.script.get("record_requests")
        if record:
            with STATE.lock, open(record, "a", encoding="utf-8") as f:
                f.write(json.dumps({"path": path, "body": req}) + "\n")
        n_prompt = len(prompt_text.encode("utf-8")) + (54 if chat else 2)  # byte tokenizer + template
        per_slot = STATE.n_ctx // max(1, STATE.n_parallel)
        if n_prompt > per_slot:
            return self._send_json(400, _error_body(
                400, f"request ({n_prompt} tokens) exceeds the available context size ({per_slot} tokens), "
                "try increasing it", "exceed_context_size_error", n_prompt_tokens=n_prompt, n_ctx=per_slot))

        sc = STATE.script
        n = req.get("max_tokens", req.get("max_completion_tokens", req.get("n_predict")))
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            n = int(sc.get("stream_chunks", 8))
        tokens = sc.get("tokens") or [f" tok{i}" for i in range(max(n, 1))]
        pieces = [str(tokens[i % len(tokens)]) for i in range(n)]
        stream = bool(req.get("stream"))

        # take a slot; requests beyond -np wait ("deferred"), like llama-server
        with STATE.lock:
            STATE.deferred += 1
        STATE.slot_sem.acquire()
        with STATE.lock:
            STATE.deferred -= 1
            slot = STATE.slot_busy.index(False) if False in STATE.slot_busy else 0
            STATE.slot_busy[slot] = True
            STATE.task_id += 1
            task = STATE.task_id
            STATE.prompt_tokens_total += n_prompt
            STATE.n_tokens_max = max(STATE.n_tokens_max, n_prompt + n)
            if stream:
                STATE.streams_inflight += 1
            else:
                STATE.nonstream_inflight += 1
        call = sc.get("tool_call")
        if chat and call and req.get("tools") and (msgs[-1] if msgs else {}).get("role") != "tool":
            pieces = []  # a tool call instead of text
        else:
            call = None
        try:
            if call and stream:
                self._stream_tool_call(req, call, n_prompt, task)
            elif call:
                self._nonstream_tool_call(req, call, n_prompt, task)
            elif stream:
                self._stream(req, chat, pieces, n_prompt, task)
            else:
                self._nonstream(req, chat, pieces, n_prompt, task)
        finally:
            with STATE.lock:
                STATE.slot_busy[slot] = False
                if stream:
                    STATE.streams_inflight -= 1
                else:
                    STATE.nonstream_inflight -= 1
            STATE.slot_sem.release()
            _notify()

    def _messages(self, body: bytes):
        """Anthropic Messages: the scripted tool call when the request offers that tool, else
        the usual pieces as text; streamed as Anthropic's event sequence when asked."""
        try:
            req = json.loads(body.decode("utf-8"))
        except ValueError:
            req = None
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
            return self._send_json(400, _error_body(400, "'messages' is required",
                                                    "invalid_request_error"))
        call = STATE.script.get("tool_use")
        offered = {t.get("name") for t in req.get("tools") or [] if isinstance(t, dict)}
        with STATE.lock:
            STATE.task_id += 1
            task = STATE.task_id
        n_prompt = len(json.dumps(req["messages"]).encode())
        if call and call.get("name") in offered:
            block = {"type": "tool_use", "id": f"toolu_fake{task}", "name": call["name"],
                     "input": call.get("input", {})}
            stop, n_out = "tool_use", 8
        else:
            n_out = int(req.get("max_tokens") or 8)
            tokens = STATE.script.get("tokens") or [f" tok{i}" for i in range(n_out)]
            text = "".join(str(tokens[i % len(tokens)]) for i in range(n_out))
            block, stop = {"type": "text", "text": text}, "max_tokens"
        message = {"id": f"msg_fake{task}", "type": "message", "role": "assistant",
                   "model": req.get("model") or STATE.model_id, "content": [block],
                   "stop_reason": stop, "stop_sequence": None,
                   "usage": {"input_tokens": n_prompt, "output_tokens": n_out}}
        if not req.get("stream"):
            return self._send_json(200, message)
        start = {**block, "input": {}} if block["type"] == "tool_use" else {**block, "text": ""}
        delta = ({"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
                 if block["type"] == "tool_use" else {"type": "text_delta", "text": block["text"]})
        events = [
            ("message_start", {"type": "message_start", "message": {
                **message, "content": [], "stop_reason": None,
                "usage": {"input_tokens": n_prompt, "output_tokens": 0}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": start}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {
                "stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": n_out}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for name, data in events:
            self._write_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self._write_chunk(b"")
        self._log_request(200)

    def _client_gone(self) -> bool:
        """True once the peer has closed its side of the connection."""
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if r:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
        return False

    def _hang_until_client_gone(self, max_seconds: float | None = None, on_timeout=None):
        """The real bug: after SIGTERM the request never finishes; the process stays up
        until the client disconnects (or, for streams, ~30 s: see hang_stream_on_sigterm)."""
        with STATE.lock:
            STATE.hanging += 1
        try:
            end = None if max_seconds is None else time.monotonic() + max_seconds
            while not self._client_gone():
                if end is not None and time.monotonic() >= end:
                    if on_timeout is not None:
                        try:
                            on_timeout()
                        except OSError:
                            pass
                    break
                time.sleep(0.05)
            self.close_connection = True
        finally:
            with STATE.lock:
                STATE.hanging -= 1
            _notify()

    def _nonstream(self, req, chat, pieces, n_prompt, task):
        sc = STATE.script
        if sc.get("crash_on_request"):
            log("fake: crash_on_request -> SIGKILL", "E")
            os.kill(os.getpid(), signal.SIGKILL)
        deadline = time.monotonic() + float(sc.get("slow_response_seconds", 0) or 0)
        while time.monotonic() < deadline or STATE.stopping:
            if STATE.stopping:
                if sc.get("hang_nonstream_on_sigterm"):
                    return self._hang_until_client_gone()
                time.sleep(0.05)  # the process exits underneath us
                continue
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        text = "".join(pieces)
        with STATE.lock:
            STATE.predicted_tokens_total += len(pieces)
            STATE.n_decode_total += len(pieces) + 1
        usage = {"completion_tokens": len(pieces), "prompt_tokens": n_prompt,
                 "total_tokens": n_prompt + len(pieces), "prompt_tokens_details": {"cached_tokens": 0}}
        common = {"created": int(time.time()), "model": req.get("model") or STATE.model_id,
                  "system_fingerprint": BUILD_INFO, "usage": usage,
                  "timings": _timings(n_prompt, len(pieces))}
        if chat:
            obj = {"choices": [{"finish_reason": "length", "index": 0,
                                "message": {"role": "assistant", "content": text}}],
                   "object": "chat.completion", "id": f"chatcmpl-fake{task}", **common}
        else:
            obj = {"choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "length"}],
                   "object": "text_completion", "id": f"cmpl-fake{task}", **common}
        self._send_json(200, obj)

    def _nonstream_tool_call(self, req, call, n_prompt, task):
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "id": f"fake-call-{task}",
             "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]}
        self._send_json(200, {
            "choices": [{"finish_reason": "tool_calls", "index": 0, "message": message}],
            "object": "chat.completion", "id": f"chatcmpl-fake{task}", "created": int(time.time()),
            "model": req.get("model") or STATE.model_id, "system_fingerprint": BUILD_INFO,
            "usage": {"completion_tokens": 3, "prompt_tokens": n_prompt,
                      "total_tokens": n_prompt + 3},
            "timings": _timings(n_prompt, 3)})

    def _stream_tool_call(self, req, call, n_prompt, task):
        arguments = json.dumps(call["arguments"])
        half = len(arguments) // 2
        deltas = [{"role": "assistant", "content": None, "tool_calls": [
                      {"index": 0, "id": f"fake-call-{task}", "type": "function",
                       "function": {"name": call["name"], "arguments": ""}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {"created": int(time.time()), "id": f"chatcmpl-fake{task}",
                "model": req.get("model") or STATE.model_id, "object": "chat.completion.chunk"}
        for delta in deltas:
            chunk = {**base, "choices": [{"finish_reason": None, "index": 0, "delta": delta}]}
            self._write_chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        last = {**base, "choices": [{"finish_reason": "tool_calls", "index": 0, "delta": {}}],
                "timings": _timings(n_prompt, 3)}
        self._write_chunk(b"data: " + json.dumps(last).encode() + b"\n\n")
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")
        self._log_request(200)

    def _write_chunk(self, data: bytes):
        size = (STATE.script.get("chunk_size_format") or "%x") % len(data) if data else "0"
        self.wfile.write(size.encode() + b"\r\n%s\r\n" % data)
        self.wfile.flush()

    def _stream(self, req, chat, pieces, n_prompt, task):
        sc = STATE.script
        interval = float(sc.get("chunk_interval", 0.01))
        crash_after = sc.get("crash_after_chunks")
        error_after = sc.get("error_after_chunks")
        model = req.get("model") or STATE.model_id
        cid = ("chatcmpl-fake%d" if chat else "cmpl-fake%d") % task
        created = int(time.time())

        def event(delta, finish=None, extra=None):
            if chat:
                obj = {"choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
                       "created": created, "id": cid, "model": model,
                       "system_fingerprint": BUILD_INFO, "object": "chat.completion.chunk"}
            else:
                obj = {"choices": [{"text": delta.get("content") or "", "index": 0,
                                    "logprobs": None, "finish_reason": finish}],
                       "created": created, "id": cid, "model": model,
                       "system_fingerprint": BUILD_INFO, "object": "text_completion"}
            if extra:
                obj.update(extra)
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        def maybe_crash(sent):
            if crash_after is not None and sent >= int(crash_after):
                log(f"fake: crash_after_chunks={crash_after} -> SIGKILL", "E")
                os.kill(os.getpid(), signal.SIGKILL)

        def cut():
            # generation stopped by SIGTERM: no more chunks, no [DONE]
            if sc.get("hang_stream_on_sigterm"):
                # the real one sends a ":" keep-alive comment after 30 s of silence, then
                # closes the connection (without the terminating chunk) and exits
                return self._hang_until_client_gone(
                    float(sc.get("stream_hang_seconds", 30)),
                    on_timeout=lambda: self._write_chunk(b":\n\n"))
            self.close_connection = True

        self.send_response(200)
        self.send_header("Access-Control-Allow-Origin", "")
        self.send_header("X-Accel-Buffering", "no")
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Keep-Alive", "timeout=5, max=100")
        self.end_headers()
        sent = 0
        try:
            if chat:
                self._write_chunk(event({"role": "assistant", "content": None}))
            for piece in pieces:
                if STATE.stopping:
                    return cut()
                maybe_crash(sent)
                if error_after is not None and sent >= int(error_after):
                    err = _error_body(500, "fake error mid-stream (error_after_chunks)", "server_error")
                    self._write_chunk(b"data: " + json.dumps(err).encode() + b"\n\n")
                    self._write_chunk(b"")
                    self._log_request(200)
                    self._after_response()
                    return
                self._write_chunk(event({"content": piece}))
                sent += 1
                with STATE.lock:
                    STATE.predicted_tokens_total += 1
                    STATE.n_decode_total += 1
                _sleep_unless_stopping(interval)
            maybe_crash(sent)
            if STATE.stopping:
                return cut()
            extra = {"timings": _timings(n_prompt, sent)}
            so = req.get("stream_options")
            if isinstance(so, dict) and so.get("include_usage"):
                extra["usage"] = {"completion_tokens": sent, "prompt_tokens": n_prompt,
                                  "total_tokens": n_prompt + sent}
            self._write_chunk(event({}, finish="length", extra=extra))
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
            self._log_request(200)
            self._after_response()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            srv("operator()", f"stream: client disconnected after {sent} chunks")
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # like cpp-httplib: SO_REUSEADDR, which on Linux still refuses a port with a listener
    allow_reuse_address = True
    request_queue_size = 128


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def _load_failed(model: str, first: str) -> None:
    log(first, "E")
    log(f"llama_model_load: error loading model: llama_model_loader: failed to load model from {model}", "E")
    log("llama_model_load_from_file_impl: failed to load model", "E")
    log(f"cmn  common_init_: failed to load model '{model}'", "E")
    srv("load_model", f"failed to load model, '{model}'", "E")
    srv("operator()", "operator(): cleaning up before exit...")
    if flavor() == "old":
        log("main: exiting due to model loading error")
    else:
        srv("llama_server", "exiting due to model loading error", "E")


def _loading_phase(path: str, sc: dict) -> None:
    """Emulate the model load; returns once 'loaded' (or never, or exits)."""
    load_seconds = max(0.0, float(sc.get("load_seconds", 0.2)))
    freeze_at = sc.get("freeze_at")
    never = bool(sc.get("never_ready")) or freeze_at is not None
    edl = sc.get("exit_during_load")
    exit_at, exit_code = None, 1
    if isinstance(edl, dict):
        exit_at, exit_code = float(edl.get("after", 0)), int(edl.get("code", 1))
    elif edl is True:
        exit_at = 0.0
    elif isinstance(edl, (int, float)) and edl is not False:
        exit_at = float(edl)

    fd, size, done = None, 0, 0
    if sc.get("read_bytes_during_load"):
        try:
            fd = os.open(path, os.O_RDONLY)
            size = os.fstat(fd).st_size
        except OSError:
            fd = None
    chunk = max(4096, min(1 << 20, size // 50 or 4096))  # at least ~50 steps
    t0 = time.monotonic()
    while True:
        now = time.monotonic() - t0
        if exit_at is not None and now >= exit_at:
            _load_failed(path, "llama_model_load: error loading model: fake load error (exit_during_load)")
            die(exit_code)
        if fd is not None and done < size:
            frac = 1.0 if load_seconds <= 0 else min(1.0, now / load_seconds)
            if freeze_at is not None:
                frac = min(frac, freeze_at)
            target = int(size * frac)
            while done < target:
                data = os.read(fd, min(chunk, target - done))
                if not data:
                    done = size
                    break
                done += len(data)
        if not never and now >= load_seconds and (fd is None or done >= size):
            break
        wake = [0.02]
        if exit_at is not None:
            wake.append(exit_at - now)
        if not never:
            wake.append(load_seconds - now)
        time.sleep(max(0.001, min(wake)))
    if fd is not None:
        os.close(fd)


def main(argv=None) -> int:
    global _log_file
    argv = list(sys.argv[1:] if argv is None else argv)

    try:
        opts = parse_args(argv)
    except ArgError as e:
        sys.stderr.write(str(e) + "\n")
        sys.stderr.flush()
        return 1
    if opt(opts, "-h", "--help", "--usage"):
        sys.stdout.write(help_text())
        sys.stdout.flush()
        return 0
    if opt(opts, "--version"):
        sys.stderr.write(FAKE_VERSION)
        sys.stderr.flush()
        return 0
    lf = opt(opts, "--log-file")
    if isinstance(lf, str):
        try:
            _log_file = open(lf, "a", encoding="utf-8")  # noqa: SIM115
        except OSError:
            pass

    if "-ngl" in opts or "--gpu-layers" in opts or "--n-gpu-layers" in opts:
        sys.stderr.write("warning: no usable GPU found, --gpu-layers option will be ignored\n"
                         "warning: one possible reason is that llama.cpp was compiled without GPU support\n"
                         "warning: consult docs/build.md for compilation instructions\n")

    model = opt(opts, "-m", "--model")
    if not isinstance(model, str):
        log("fake: no -m given (a real llama-server would start in router mode); exiting", "E")
        return 1

    host = opt(opts, "--host", default="127.0.0.1")
    port = int(opt(opts, "--port", default="8080"))
    kind, sc = load_script(model)
    sc = sc if isinstance(sc, dict) else {}

    STATE.script = sc
    STATE.model_path = model
    alias = opt(opts, "-a", "--alias")
    STATE.model_id = alias.split(",")[0] if isinstance(alias, str) else model
    np_ = int(opt(opts, "-np", "--parallel", default="-1"))
    STATE.n_parallel = np_ if np_ > 0 else (4 if flavor() == "new" else 1)
    STATE.slot_busy = [False] * STATE.n_parallel
    STATE.slot_sem = threading.Semaphore(STATE.n_parallel)
    STATE.metrics = "--metrics" in opts
    STATE.slots_enabled = ("--no-slots" not in opts) if flavor() == "new" else ("--slots" in opts)
    save_path = opt(opts, "--slot-save-path")
    STATE.slot_save_path = save_path if isinstance(save_path, str) else None
    key = opt(opts, "--api-key")
    if isinstance(key, str):
        STATE.api_keys = [k for k in key.split(",") if k]
    ctx = int(opt(opts, "-c", "--ctx-size", default="0" if flavor() == "new" else "4096"))
    gguf_ctx = _gguf_context_length(model) if kind == "gguf" else None
    STATE.n_ctx_train = int(sc.get("n_ctx_train") or gguf_ctx or 4096)
    STATE.n_ctx = ctx if ctx > 0 else STATE.n_ctx_train

    # during the load llama-server has no handler: SIGTERM/SIGINT kill it at once
    signal.signal(signal.SIGTERM, signal.SIG_IGN if sc.get("ignore_sigterm") else signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    if flavor() == "new":
        srv("llama_server", "initializing ...")
        log("cmn  common_param: common_params_print_info: verbosity = 3 (adjust with the `-lv N` CLI arg)")
    else:
        log("build: 11434 (fake0000) with fake_llama_server.py for x86_64-linux-gnu")
        log("system info: n_threads = 2, n_threads_batch = 2, total_threads = 2")

    bind_delay = float(sc.get("bind_delay", 0) or 0)
    if bind_delay > 0:
        time.sleep(bind_delay)
    try:
        httpd = Server((host, port), Handler)
    except OSError as e:
        srv("start", f"couldn't bind HTTP server socket, hostname: {host}, port: {port}", "E")
        srv("operator()", "operator(): cleaning up before exit...")
        if flavor() == "old":
            log("main: exiting due to HTTP server error")
        else:
            srv("llama_server", "exiting due to HTTP server error", "E")
        log(f"fake: bind error: {e}", "E")
        return 1
    actual_port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    if flavor() == "old":
        log(f"main: HTTP server is listening, hostname: {host}, port: {actual_port}, http threads: 3")
        log("main: loading model")
    srv("load_model", f"loading model '{model}'")

    if kind == "missing":
        time.sleep(0.005)
        _load_failed(model, f"gguf_init_from_file: failed to open GGUF file '{model}' (No such file or directory)")
        die(1)
    if kind == "invalid":
        time.sleep(0.005)
        _load_failed(model, "gguf_init_from_file_impl: invalid magic characters: expected 'GGUF'")
        die(1)

    _loading_phase(model, sc)

    n_ctx_slot = STATE.n_ctx // max(1, STATE.n_parallel)
    srv("load_model", f"initializing, n_slots = {STATE.n_parallel}, n_ctx_slot = {n_ctx_slot}, "
        "kv_unified = 'false'")
    STATE.ready = True
    if flavor() == "old":
        log("main: model loaded")
        log(f"main: server is listening on http://{host}:{actual_port} - starting the main loop")
    else:
        srv("llama_server", "model loaded")
        srv("llama_server", f"listening on http://{host}:{actual_port}")
    srv("update_slots", "all slots are idle")

    # ready: llama-server's handler (first signal: graceful stop; second: exit(1) at once)
    signals = {"n": 0}

    def on_signal(signum, frame):
        signals["n"] += 1
        if signals["n"] >= 2:
            sys.stderr.write("Received second interrupt, terminating immediately.\n")
            die(1)
        if sc.get("hang_on_sigterm"):
            log("fake: hang_on_sigterm -> the first signal changes nothing", "W")
            return
        STATE.stopping = True
        _notify()

    if not sc.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    while True:
        with _wake:
            _wake.wait(0.1)
        if STATE.stopping:
            break
    srv("operator()", "operator(): cleaning up before exit...")
    try:
        httpd.socket.close()  # no new connections
    except OSError:
        pass
    # give in-flight requests a moment to notice the stop (streams end without [DONE]);
    # requests emulating the hang bug keep us alive until their clients disconnect
    t_end = time.monotonic() + 0.2
    while True:
        with STATE.lock:
            hanging = STATE.hanging
            busy = STATE.streams_inflight + STATE.nonstream_inflight
        if not hanging and (busy == 0 or time.monotonic() >= t_end):
            break
        time.sleep(0.01)
    die(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
