"""Discovery again only when something it read has changed.

A listing (`GET /models`, `/api/tags`, ...) and every switch ask for the catalog; with a
thousand models, walking the trees, parsing a thousand config.yaml files and merging each
with the global config costs far more than answering. `discover_cached` keeps the last
catalog with the stat of every path it was made from (`Catalog.watched`: each directory
walked, each config file, each model file, each configured root) and returns it again while
every one of those stats is unchanged and the global config is equal. A new, removed or
renamed file changes its directory's mtime; an edit in place changes the file's own mtime,
ctime or size; a symlink is followed. So a change shows up at the next call, and an
unchanged tree costs one stat per path.

Timestamps are coarse (a few ms on Linux, up to seconds on network file systems): a file
changed twice within one tick, to the same size, would look unchanged. So a catalog made
while any path it came from was younger than RACY_SECONDS is not kept (the next call scans
again), as git does with its index.

The memo belongs to the process (one per models dir and header-cache file). Callers must not
change the catalog they are given: the next caller gets the same object.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.core.catalog import Catalog
from llmctl.core.config import GlobalConfig
from llmctl.core.discovery import discover

RACY_SECONDS = 2.0  # coarse mtimes (network file systems): younger paths are not trusted

Stamp = tuple[int, int, int, int] | None


@dataclass
class _Memo:
    global_data: dict[str, Any]
    stamps: list[tuple[str, Stamp]]
    catalog: Catalog

    def still_true(self, global_cfg: GlobalConfig) -> bool:
        if global_cfg.data != self.global_data:
            return False
        for path, was in self.stamps:  # a plain loop over str paths: ~1 us a path
            try:
                st = os.stat(path)
            except OSError:
                if was is not None:
                    return False
                continue
            if was != (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino):
                return False
        return True


_MEMOS: dict[tuple[str, str], _Memo] = {}


def stamp(path: Path | str) -> Stamp:
    """What changes when a path's content or listing does (None: absent)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino


def discover_cached(models_dir: Path, global_cfg: GlobalConfig, cache_file: Path | None = None,
                    ) -> Catalog:
    """discover(), or the catalog it gave last time if nothing it was made from changed."""
    key = (str(models_dir), str(cache_file))
    memo = _MEMOS.get(key)
    if memo is not None and memo.still_true(global_cfg):
        return memo.catalog
    started = time.time_ns()
    catalog = discover(models_dir, global_cfg, cache_file)
    stamps = [(path, stamp(path)) for path in dict.fromkeys(map(os.fspath, catalog.watched))]
    young = started - int(RACY_SECONDS * 1e9)
    if any(s is not None and max(s[0], s[1]) >= young for _, s in stamps):
        _MEMOS.pop(key, None)  # changed just now: the next call looks again
    else:
        _MEMOS[key] = _Memo(copy.deepcopy(global_cfg.data), stamps, catalog)
    return catalog


def forget() -> None:
    """Drop every memo (tests; a caller that knows better than the stats)."""
    _MEMOS.clear()
