"""Finding GGUF files on disk: the walk, the grouping of files into models, and the header cache.

A directory tree (llmctl's own `gguf/`, or a read-only `daemon.model_dirs` entry such as the
Hugging Face cache or LM Studio's models folder) is walked once per discovery. In each directory:

- `<prefix>-00001-of-0000N.gguf` ... are the shards of one model, loaded through the first;
- `mmproj*.gguf` is the multimodal projector of the models beside it, never a model itself;
- every other `.gguf` is one model.

Hugging Face cache repositories (`models--<org>--<name>/snapshots/<rev>/`, files symlinked into
`blobs/`) are walked through one snapshot (the one `refs/main` names, else the newest) and
remember their repository, from which model_ids builds the id. Symlinked directories are
followed once (a loop is walked once). Nothing here writes to a scanned tree.

Reading a GGUF header costs milliseconds to a quarter of a second (a 150k-token vocabulary is
skipped string by string), so HeaderCache keeps the facts by path, size and mtime, in memory
and in a JSON file in the runtime directory, and discovery of hundreds of files stays cheap.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.core import model_ids
from llmctl.core.gguf import GGUFError, read_facts

CONFIG_NAMES = ("config.yaml", "config.yml")
MAX_DEPTH = 10  # deeper trees are not model folders; stop rather than wander a whole disk
_HF_REPO = re.compile(r"^models--(?P<org>[^-].*?)--(?P<name>.+)$")
CACHE_VERSION = 1


@dataclass
class FoundModel:
    """One model made of files found by the walk."""

    path: Path  # the file llama-server is given (the first shard of a split model)
    root: Path  # the tree it was found in (gguf/ or a model_dirs entry)
    repo: str | None = None  # "org/name" inside a Hugging Face cache
    shards: list[Path] = field(default_factory=list)  # all files, first shard first
    missing_shards: list[str] = field(default_factory=list)
    projector: Path | None = None
    note: str | None = None  # something the user should know (several projectors, ...)

    @property
    def directory(self) -> Path:
        return self.path.parent


@dataclass
class ScanResult:
    models: list[FoundModel] = field(default_factory=list)
    config_files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # every directory the walk listed (and a Hugging Face repository's refs/main and
    # snapshots/): what catalog_memo.py stats to know whether a new walk would differ
    watched: list[Path] = field(default_factory=list)


def scan(root: Path, *, configs: bool = False) -> ScanResult:
    """Every model under `root`; with `configs`, also every config.yaml below it (llmctl's own
    tree only: a foreign folder's YAML files are none of our business)."""
    result = ScanResult()
    _walk(root, root, None, result, set(), configs, 0)
    return result


def _walk(directory: Path, root: Path, repo: str | None, result: ScanResult,
          seen: set[tuple[int, int]], configs: bool, depth: int) -> None:
    try:
        st = directory.stat()
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return  # an absent gguf/, or a directory removed while we walk
    except OSError as e:
        result.problems.append(f"{directory}: cannot list: {e.strerror}")
        return
    if (st.st_dev, st.st_ino) in seen:
        return
    seen.add((st.st_dev, st.st_ino))
    result.watched.append(directory)
    files: list[Path] = []
    subdirs: list[Path] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            subdirs.append(path)
        elif entry.name.lower().endswith(".gguf"):
            files.append(path)  # a dangling symlink too: it is listed with its error
        elif configs and depth > 0 and entry.name in CONFIG_NAMES:
            result.config_files.append(path)
    result.models.extend(group(files, root, repo))
    if depth >= MAX_DEPTH:
        if subdirs:
            result.problems.append(f"{directory}: not scanned deeper than {MAX_DEPTH} levels")
        return
    for sub in subdirs:
        hf = _HF_REPO.fullmatch(sub.name)
        if hf is not None and (sub / "snapshots").is_dir():
            result.watched += [sub / "refs" / "main", sub / "snapshots"]
            snapshot = pick_snapshot(sub)
            if snapshot is not None:
                _walk(snapshot, root, f"{hf['org']}/{hf['name']}", result, seen, configs,
                      depth + 1)
            continue
        _walk(sub, root, repo, result, seen, configs, depth + 1)


def pick_snapshot(repo_dir: Path) -> Path | None:
    """The snapshot a Hugging Face cache repository serves: the revision `refs/main` names,
    else the most recently written one (several revisions would be the same model twice)."""
    snapshots = repo_dir / "snapshots"
    try:
        ref = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        ref = ""
    if ref and (snapshots / ref).is_dir():
        return snapshots / ref
    try:
        revisions = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(revisions, key=lambda p: p.stat().st_mtime, default=None)


def group(files: list[Path], root: Path, repo: str | None = None) -> list[FoundModel]:
    """The models made of the .gguf files of one directory."""
    projectors = [f for f in files if model_ids.is_projector(f.name)]
    split: dict[tuple[str, int], dict[int, Path]] = {}
    models: list[FoundModel] = []
    for f in files:
        if model_ids.is_projector(f.name):
            continue
        shard = model_ids.shard_of(f.name)
        if shard is None:
            models.append(FoundModel(path=f, root=root, repo=repo, shards=[f]))
        else:
            prefix, number, count = shard
            split.setdefault((prefix, count), {})[number] = f
    for (prefix, count), parts in split.items():
        directory = next(iter(parts.values())).parent
        first = directory / model_ids.shard_name(prefix, 1, count)
        missing = [model_ids.shard_name(prefix, n, count) for n in range(1, count + 1)
                   if n not in parts]
        models.append(FoundModel(path=first, root=root, repo=repo, missing_shards=missing,
                                 shards=[parts[n] for n in sorted(parts)]))
    projector, note = _projector(projectors)
    for model in models:
        model.projector, model.note = projector, note
    return sorted(models, key=lambda m: m.path.name)


def _projector(projectors: list[Path]) -> tuple[Path | None, str | None]:
    if not projectors:
        return None, None
    chosen = sorted(projectors, key=lambda p: p.name)[0]
    if len(projectors) == 1:
        return chosen, None
    names = ", ".join(sorted(p.name for p in projectors))
    return chosen, (f"several projectors here ({names}); using {chosen.name} — name another "
                    "with mmproj_file in a config.yaml")


# --- header cache -------------------------------------------------------------------------------


class HeaderCache:
    """GGUF header facts (or the error reading them) by path, valid while size and mtime are."""

    def __init__(self, file: Path | None):
        self.file = file
        self.entries: dict[str, tuple[int, int, dict[str, Any] | None, str | None]] = {}
        self.dirty = False
        self.used: set[str] = set()
        if file is not None:
            self._load(file)

    def _load(self, file: Path) -> None:
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            return  # absent or damaged: it is only a cache, rebuilt by the next scan
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return
        for path, value in (data.get("entries") or {}).items():
            if isinstance(value, list) and len(value) == 4:
                self.entries[path] = (value[0], value[1], value[2], value[3])

    def facts(self, path: Path) -> tuple[dict[str, Any] | None, str | None]:
        """(facts, None) for a readable GGUF, (None, error) otherwise."""
        key = str(path)
        self.used.add(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None, ("is a dangling symlink" if path.is_symlink() else "does not exist")
        except OSError as e:
            return None, f"cannot read: {e.strerror}"
        cached = self.entries.get(key)
        if cached is not None and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return cached[2], cached[3]
        facts: dict[str, Any] | None = None
        error: str | None = None
        try:
            facts = read_facts(path)
        except GGUFError as e:
            error = str(e)
        except OSError as e:
            error = f"cannot read: {e.strerror}"
        self.entries[key] = (st.st_size, st.st_mtime_ns, facts, error)
        self.dirty = True
        return facts, error

    def save(self) -> None:
        """Write the entries this scan used (files gone since are forgotten), if any changed."""
        stale = set(self.entries) - self.used
        self.used = set()
        if self.file is None or not (self.dirty or stale):
            return
        for key in stale:
            del self.entries[key]
        self.dirty = False
        data = {"version": CACHE_VERSION, "entries": {k: list(v) for k, v in
                                                      self.entries.items()}}
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".headers-")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.file)
        except OSError:
            pass  # a read-only runtime dir only costs the next process a re-read


_CACHES: dict[str, HeaderCache] = {}


def header_cache(file: Path | None) -> HeaderCache:
    """The process's cache for `file` (read from disk once, then kept in memory)."""
    key = str(file)
    if key not in _CACHES:
        _CACHES[key] = HeaderCache(file)
    return _CACHES[key]
