"""One file of a Hugging Face repository into huggingface_hub's cache, verified, and resumable
across runs: what `llmctl pull` does per file.

huggingface_hub 2.4's `hf_hub_download` resumes only inside one call: it writes to a file named
`<etag>.<random>.incomplete` and deletes it in a `finally` on any error, Ctrl-C included (a
SIGKILL leaves it behind under a name no later call looks for). So a pull stopped by Ctrl-C, a
killed process or a network outage longer than the library's retries would start the file over.
Here the partial file has a fixed name, `<cache>/models--<org>--<name>/blobs/<etag>.incomplete`
(the name huggingface_hub's cache tools count as an interrupted download: `hf cache scan`
reports it, `hf cache prune` deletes it), and it is kept whatever stops the download. The next
run continues it with the library's own pieces, so HF_TOKEN, HF_ENDPOINT and HF_HOME /
HF_HUB_CACHE apply as they do to `hf_hub_download`:

- `hf_hub_url` + `get_hf_file_metadata`: the file's URL under HF_ENDPOINT, its etag (the sha256
  of an LFS file, which names the blob), size, and where the hub redirects for the bytes;
- `build_hf_headers`: HF_TOKEN and the user agent; the token is dropped when the redirect leaves
  the hub's host (signed CDN URLs), as the library does;
- `http_get` with `resume_size`: the `Range: bytes=N-` request, the library's retries inside a
  run, the restart when a server ignores the range, the final size check;
- the library's lock file for the blob, so two pulls (or a pull and another tool using the cache)
  never write one file at once;
- `hf_hub_download`, last, to link the finished blob into the snapshot exactly as the library
  does (it finds the blob and downloads nothing).

Only a complete file whose sha256 matches the hub's listing becomes the blob. A partial larger
than the remote file is discarded and the file downloaded again; a finished file that does not
match is deleted (which of its bytes are bad cannot be known) and the pull fails, so the next run
starts clean. Plain HTTP is used even where the `hf_xet` package could fetch a Xet-backed file
faster: a Xet download cannot be continued across runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Emit = Callable[[dict[str, Any]], None]
PROGRESS_EVERY = 0.25  # seconds between progress events of one file
LOCK_WAIT = 2.0  # seconds to wait for another process's download of the same blob to let go
DISK_MARGIN = 64 << 20  # bytes left free after a download, for the snapshot link and logs


class FetchError(Exception):
    """A file that could not be fetched; `code` is what pull.PullError carries on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def fetch(repo: str, filename: str, revision: str | None, sha256: str | None,
          emit: Emit, listed_size: int | None = None) -> Path:
    """The cached file (the snapshot's link to its blob), downloaded, continued or found in the
    cache, and checked against `sha256` (the hub's listing), or where the hub lists none (a
    file not in LFS) against `listed_size`. Raises FetchError."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(cached, str):  # pulled before (or by another tool): check it again
        verify(Path(cached), filename, sha256, emit, evict=True, size=listed_size)
        return Path(cached)
    url, location, etag, size = _metadata(repo, filename, revision)
    if size is None:
        size = listed_size
    blob = _storage(repo) / "blobs" / etag
    verified = not blob.exists() and _download_blob(url, location, blob, filename, size,
                                                    sha256, repo, emit, listed_size)
    try:
        # finds the blob and only links it into snapshots/<revision>/ (and refs)
        path = Path(hf_hub_download(repo, filename, revision=revision))
    except Exception as e:
        raise FetchError("download_failed", f"{filename} is downloaded to {blob} but could "
                         f"not be linked into the cache's snapshot: {short(e)}") from None
    if not verified:  # the blob was there already (another revision, another tool)
        verify(path, filename, sha256, emit, evict=True, size=listed_size)
    return path


def space_needed(repo: str, revision: str | None,
                 files: list[tuple[str, int | None, str | None]]) -> tuple[int, Path]:
    """(bytes still to download, the directory they go to) for a pull's whole set of files
    (name, size, sha256): nothing for a file in the cache already, the rest for one whose
    partial download (named by its sha256, the blob's name) is kept."""
    from huggingface_hub import try_to_load_from_cache

    blobs = _storage(repo) / "blobs"
    needed = 0
    for filename, size, sha256 in files:
        if size is None or isinstance(try_to_load_from_cache(repo, filename, revision=revision),
                                      str):
            continue
        have = 0
        if sha256:
            if (blobs / sha256).exists():
                continue
            partial = partial_path(blobs / sha256)
            have = partial.stat().st_size if partial.exists() else 0
        needed += max(0, size - have)
    return needed, blobs


def check_space_for_all(repo: str, revision: str | None,
                        files: list[tuple[str, int | None, str | None]]) -> None:
    """Refuse a pull whose files do not all fit, before the first byte: checked file by file,
    the first shards of a split model would fill the disk and the pull fail at the next."""
    needed, blobs = space_needed(repo, revision, files)
    if not needed:
        return
    where = _existing(blobs)
    free = shutil.disk_usage(where).free
    if free < needed + DISK_MARGIN:
        count = len(files)
        raise FetchError("no_space", (
            f"{repo}: the {count} file{'s' if count != 1 else ''} of this pull need "
            f"{_size(needed)} ({needed} bytes) more in {blobs}, plus {_size(DISK_MARGIN)} "
            f"kept free, but only {_size(free)} ({free} bytes) are free there; nothing was "
            "downloaded. Free some space (or point HF_HUB_CACHE elsewhere) and run the same "
            "pull again"))


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def partial_path(blob: Path) -> Path:
    return blob.with_name(blob.name + ".incomplete")


def _storage(repo: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def _metadata(repo: str, filename: str, revision: str | None) -> tuple[str, str, str, int | None]:
    """(url, where to GET the bytes, etag, size) from the hub's HEAD answer."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    url = hf_hub_url(repo, filename, revision=revision)
    try:
        meta = get_hf_file_metadata(url, retry_on_errors=True)
    except EntryNotFoundError:
        raise FetchError("not_found", f"{repo} has no file {filename} at "
                         f"{revision or 'main'}") from None
    except HfHubHTTPError as e:
        raise FetchError("hub_error", f"the hub refused {filename}: {short(e)}") from None
    except Exception as e:  # connection errors of the HTTP client have no common base here
        raise FetchError("hub_unreachable", f"cannot reach the hub for {filename} ({short(e)}); "
                         "check the network or HF_ENDPOINT, then run the same pull again"
                         ) from None
    if not meta.etag:
        raise FetchError("hub_error", f"the hub sent no ETag for {filename}, so it cannot be "
                         "cached; is HF_ENDPOINT a Hugging Face hub?")
    return url, meta.location or url, meta.etag, meta.size


def _download_blob(url: str, location: str, blob: Path, filename: str, size: int | None,
                   sha256: str | None, repo: str, emit: Emit,
                   listed_size: int | None = None) -> bool:
    """Download (or continue) the blob, verify it and move it in place; False when another
    process finished it meanwhile (so it is still to be checked)."""
    from filelock import Timeout
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import WeakFileLock

    lock = (Path(constants.HF_HUB_CACHE) / ".locks" / repo_folder_name(repo_id=repo,
            repo_type="model") / f"{blob.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    blob.parent.mkdir(parents=True, exist_ok=True)
    try:
        with WeakFileLock(lock, timeout=LOCK_WAIT):
            if blob.exists():  # the other holder finished it meanwhile
                return False
            resumed = _continue(url, location, partial_path(blob), filename, size, emit)
            verify(partial_path(blob), filename, sha256, emit, resumed=resumed,
                   size=listed_size)
            os.replace(partial_path(blob), blob)
            return True
    except Timeout:
        raise FetchError("busy", f"another download of {filename} is running (it holds "
                         f"{lock}); wait for it to finish, then run the same pull again"
                         ) from None


def _continue(url: str, location: str, partial: Path, filename: str, size: int | None,
              emit: Emit) -> int:
    """Download into `partial`, continuing what it holds; the bytes it held before."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:
        emit({"event": "restart", "file": filename, "bytes": have,
              "reason": f"the partial download {partial} holds {have} bytes, more than the "
                        f"{size} of the file on the hub; discarding it and starting over"})
        partial.unlink()
        have = 0
    elif have:
        emit({"event": "resume", "file": filename, "bytes": have, "total": size,
              "partial": str(partial)})
    if size is not None:
        _check_space(partial.parent, size - have, filename)
    headers = build_hf_headers()  # HF_TOKEN, unless HF_HUB_DISABLE_IMPLICIT_TOKEN
    headers["Accept-Encoding"] = "identity"  # a compressed answer would defeat the Range
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN URL: the token stays with the hub
    try:
        with open(partial, "ab") as out:
            http_get(location, out, resume_size=have, headers=headers, expected_size=size,
                     displayed_filename=filename, tqdm_class=_reporter(filename, size, have,
                                                                       emit))
    except KeyboardInterrupt:
        raise FetchError("interrupted",
                         f"{filename}: interrupted; {_kept(partial, size)}") from None
    except Exception as e:
        if size is not None and partial.exists() and partial.stat().st_size > size:
            partial.unlink()  # more bytes than the file has: nothing of it can be trusted
            raise FetchError("download_failed", f"downloading {filename} failed: the server "
                             "sent more than the file's size; the partial file was removed. "
                             "Run the same pull again") from None
        raise FetchError("download_failed", f"downloading {filename} failed: {short(e)}. "
                         f"{_kept(partial, size)}") from None
    return have


def _kept(partial: Path, size: int | None) -> str:
    """What the partial file holds, and what to do next."""
    have = partial.stat().st_size if partial.exists() else 0
    if not have:  # less than one write chunk (10 MiB) had arrived
        return "nothing was kept yet. Run the same pull again"
    return (f"{have} of {size if size is not None else '?'} bytes are kept in {partial}. Run "
            "the same pull again to resume")


def _check_space(directory: Path, needed: int, filename: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed + DISK_MARGIN:
        raise FetchError("no_space", f"{filename} needs {needed} more bytes in {directory} but "
                         f"only {free} are free; free some space (or point HF_HUB_CACHE "
                         "elsewhere) and run the same pull again")


def verify(path: Path, filename: str, sha256: str | None, emit: Emit, *, evict: bool = False,
           resumed: int = 0, size: int | None = None) -> str:
    """Compare `path` with the hub's sha256, or, for a file the hub lists without one (not
    in LFS), with the size it lists; on a mismatch remove it (`evict`: a cached file, its
    blob and the snapshot's link to it) so the next pull downloads it again. Returns how it
    was verified: "sha256", "size" or "none" (the hub listed neither); the `verified` event
    says so too (`method`)."""
    if not sha256:
        if size is None:
            emit({"event": "unverified", "file": filename,
                  "reason": "the hub lists neither a sha256 nor a size for it"})
            return "none"
        actual = path.stat().st_size
        if actual == size:
            emit({"event": "verified", "file": filename, "method": "size", "size": size})
            return "size"
        _remove(path, evict)
        raise FetchError("checksum", f"{filename} has {actual} bytes, but the hub lists "
                         f"{size} (it has no sha256 for this file, so its size is what can be "
                         f"checked); {_removed(evict)}, nothing was registered. Run the same "
                         "pull again: it starts from scratch")
    emit({"event": "verifying", "file": filename})
    digest = _sha256(path)
    if digest == sha256:
        emit({"event": "verified", "file": filename, "method": "sha256", "sha256": digest})
        return "sha256"
    _remove(path, evict)
    why = f" (it continued {resumed} bytes kept from an earlier run)" if resumed else ""
    raise FetchError("checksum", f"{filename} does not match the hub's checksum (sha256 "
                     f"{digest[:16]}…, expected {sha256[:16]}…){why}; {_removed(evict)}, "
                     "nothing was registered. Run the same pull again: it starts from scratch")


def _remove(path: Path, evict: bool) -> None:
    if evict:
        _evict(path)
    else:
        path.unlink(missing_ok=True)


def _removed(evict: bool) -> str:
    return "the bad copy was removed from the cache" if evict else "the download was deleted"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _evict(pointer: Path) -> None:
    blob = pointer.resolve()
    for p in (pointer, blob):
        p.unlink(missing_ok=True)


def short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _reporter(filename: str, size: int | None, resumed: int, emit: Emit) -> type:
    """A progress-bar class for huggingface_hub's `http_get` (it accepts any class shaped like
    tqdm) that turns byte counts into throttled `progress` events. `resumed_from` in them is
    where this run started, so a rate and ETA count only this run's bytes."""

    class Reporter:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0,
                     **kwargs: Any):
            self.total = total or size
            self.n = self.start_n = initial
            self.started = time.monotonic()
            self.last = 0.0
            if resumed and initial < resumed:  # http_get found the server ignoring the Range
                emit({"event": "restart", "file": filename, "bytes": resumed,
                      "reason": "the server does not resume (it ignored the Range request); "
                                "downloading the whole file"})

        def __enter__(self) -> Reporter:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.close()

        def update(self, n: int | float = 1) -> None:
            self.n += int(n)
            now = time.monotonic()
            if now - self.last >= PROGRESS_EVERY or (self.total and self.n >= self.total):
                self.last = now
                self._emit(now)

        def _emit(self, now: float) -> None:
            elapsed = max(now - self.started, 1e-6)
            rate = (self.n - self.start_n) / elapsed
            left = (self.total - self.n) / rate if self.total and rate > 0 else None
            emit({"event": "progress", "file": filename, "bytes": self.n,
                  "total": self.total, "resumed_from": self.start_n, "rate": round(rate),
                  "percent": round(100 * self.n / self.total, 1) if self.total else None,
                  "eta_s": round(left, 1) if left is not None else None})

        def close(self) -> None:
            pass

    return Reporter
