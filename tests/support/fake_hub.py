"""A local HTTP server speaking the part of the Hugging Face Hub API that huggingface_hub's
`HfApi.model_info(files_metadata=True)` and `hf_hub_download` use (read from huggingface_hub
2.4's hf_api.py and file_download.py), so `llmctl pull` runs the real library end to end with
HF_ENDPOINT pointing here:

    GET  /api/models/<org>/<name>[/revision/<rev>]?blobs=True
         {"id", "sha", "siblings": [{"rfilename", "size", "blobId", "lfs": {"sha256", "size",
         "pointerSize"}}]}; unknown repos 404 with X-Error-Code: RepoNotFound
    HEAD /<org>/<name>/resolve/<rev>/<path>
         an LFS file (.gguf): 302 to /lfs/<sha256> with X-Repo-Commit, X-Linked-Etag (the
         sha256), X-Linked-Size and the pointer's ETag, as the hub answers; others 200 with
         ETag, Content-Length and X-Repo-Commit; unknown files 404 with EntryNotFound
    GET  the same: the content (LFS via the redirect)
    GET  /lfs/<sha256>   the blob, honouring `Range: bytes=N-` (206 + Content-Range), on a
         second port: another origin, like the hub's CDN, so the client stops its HEAD at the
         redirect and reads the metadata from it (utils/_http.py), and sends no token there

Faults, for the tests: `drop_once[path] = n` sends the full Content-Length but closes the
connection after n bytes, once (the client must resume with a Range); `corrupt.add(path)` serves
bytes that do not match the sha256 it lists; `trickle[path] = s` sends 64 KiB every s seconds;
`plain.add(path)` keeps a .gguf in git rather than LFS (no sha256 in the listing, served
directly with its git sha1 as ETag, as the hub does for small files); `ignore_range.add(path)` answers a Range request with 200 and the whole file, as some proxies
and CDNs do; `stall[path] = n` sends n bytes of the next body of that file and then holds the connection open,
sending nothing more, until the hub stops (so a test can interrupt a pull at a known point). `requests` records (method, path, headers); `served` records each blob body sent
as (path, first byte, bytes written).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
STALL_LIMIT = 120.0  # seconds a stalled answer waits at most (a test fails well before)


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = COMMIT


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    drop_once: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    trickle: dict[str, float] = field(default_factory=dict)  # path -> seconds per 64 KiB
    stall: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before stalling
    ignore_range: set[str] = field(default_factory=set)
    plain: set[str] = field(default_factory=set)  # .gguf files kept in git, not LFS
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    served: list[tuple[str, int, int]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None
    cdn: ThreadingHTTPServer | None = None  # another origin, as the hub's LFS storage is

    def add(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos[repo] = Repo(files)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        assert self.cdn is not None
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        for server in (self.server, self.cdn):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # lets a stalled answer go
        for server in (self.server, self.cdn):
            if server is not None:
                server.shutdown()
                server.server_close()

    def blob(self, sha: str) -> tuple[str, bytes] | None:
        for repo in self.repos.values():
            for path, data in repo.files.items():
                if hashlib.sha256(data).hexdigest() == sha:
                    return path, data
        return None

    def ranges(self) -> list[str]:
        return [h["range"] for m, _, h in self.requests if m == "GET" and "range" in h]

    def served_bytes(self, path: str) -> int:
        return sum(n for p, _, n in self.served if p == path)


def is_lfs(path: str) -> bool:
    return path.endswith(".gguf")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append((self.command, path, {k.lower(): v for k, v in
                                                       self.headers.items()}))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
            return self._info(m.group(1))
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(m.group(1), m.group(3), body)
        if m := re.fullmatch(r"/lfs/([0-9a-f]{64})", path):
            return self._lfs(m.group(1), body)
        self._send(404, b'{"error": "no such route"}', {"Content-Type": "application/json"})

    def _info(self, repo_id: str) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._send(404, b'{"error": "Repository not found"}',
                              {"X-Error-Code": "RepoNotFound",
                               "Content-Type": "application/json"})
        siblings = []
        for path, data in sorted(repo.files.items()):
            sibling: dict[str, Any] = {"rfilename": path, "size": len(data),
                                       "blobId": git_sha1(data)}
            if is_lfs(path) and path not in self.hub.plain:
                sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                  "size": len(data), "pointerSize": 134}
            siblings.append(sibling)
        doc = {"id": repo_id, "sha": repo.sha, "private": False, "tags": ["gguf"],
               "siblings": siblings}
        self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, path: str, body: bool) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._send(404, b"", {"X-Error-Code": "RepoNotFound"})
        data = repo.files.get(path)
        if data is None:
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound",
                                         "X-Repo-Commit": repo.sha})
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{git_sha1(data)}"'}
        if not is_lfs(path) or path in self.hub.plain:
            return self._send(200, data if body else b"", headers, length=len(data))
        sha = hashlib.sha256(data).hexdigest()
        headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                        "Location": f"{self.hub.cdn_url}/lfs/{sha}"})
        self._send(302, b"", headers)

    def _lfs(self, sha: str, body: bool) -> None:
        found = self.hub.blob(sha)
        if found is None:
            return self._send(404, b"")
        path, data = found
        if path in self.hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if m and path not in self.hub.ignore_range:
            start = int(m.group(1))
        headers = {"ETag": f'"{sha}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        status = 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        part = data[start:]
        if not body:
            return self._send(status, b"", headers, length=len(part))
        stall = self.hub.stall.pop(path, None)
        if stall is not None:  # promise it all, send some, then nothing until the end
            self._send(status, b"", headers, length=len(part))
            self.wfile.write(part[:stall])
            self.wfile.flush()
            self.hub.served.append((path, start, min(stall, len(part))))
            self.hub.stopping.wait(STALL_LIMIT)
            self.close_connection = True
            return
        cut = self.hub.drop_once.pop(path, None)
        if cut is not None:  # promise it all, send some, hang up
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(part))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(part[:cut])
            self.wfile.flush()
            self.hub.served.append((path, start, min(cut, len(part))))
            self.close_connection = True
            self.connection.shutdown(2)
            return
        delay = self.hub.trickle.get(path)
        if delay is not None:  # a slow link: the body in 64 KiB pieces
            self._send(status, b"", headers, length=len(part))
            for at in range(0, len(part), 1 << 16):
                time.sleep(delay)
                try:
                    self.wfile.write(part[at:at + (1 << 16)])
                except OSError:
                    return  # the client hung up
            self.hub.served.append((path, start, len(part)))
            return
        self._send(status, part, headers)
        self.hub.served.append((path, start, len(part)))

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)
