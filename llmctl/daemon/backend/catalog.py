"""The model catalog as the lifecycle worker reads it: one model's merged config, the default
model, and what must change on disk before a failed default load is worth another try.

Every call reads the configuration afresh and asks for the catalog (backend/catalog_memo.py: the
same one again only while nothing it was made from changed on disk), so a switch after an
edit sees the edit.
"""

from __future__ import annotations

from typing import Any

from llmctl.core.catalog import ModelEntry
from llmctl.core.config import ConfigError, GlobalConfig, load_global
from llmctl.core.paths import Paths
from llmctl.daemon.backend import starter
from llmctl.daemon.backend.catalog_memo import discover_cached as discover


def lookup(paths: Paths, model_id: str) -> tuple[dict[str, Any], ModelEntry, GlobalConfig]:
    """The model's merged config and catalog entry, and the global config they came from.
    Raises LookupError (no such id) or ConfigError."""
    global_cfg = load_global(paths.config_file)
    entry = discover(paths.models_dir, global_cfg, paths.header_cache).by_id(model_id)
    if entry is None:
        raise LookupError(f"no model with id {model_id!r}; run `llmctl models` to list them")
    return entry.config or {}, entry, global_cfg


def default_model(paths: Paths) -> str | None:
    """daemon.default_model, else the starter model when it is there (starter.py)."""
    cfg = load_global(paths.config_file)
    return starter.default_model(cfg, discover(paths.models_dir, cfg, paths.header_cache))


def signature(paths: Paths, model: str) -> tuple[Any, ...]:
    """What must change for a failed default load to be worth another try: the global
    config, the model's config.yaml and its GGUF (path, size, mtime)."""
    files = [paths.config_file]
    try:
        entry = discover(paths.models_dir, load_global(paths.config_file),
                         paths.header_cache).by_id(model)
    except ConfigError:
        entry = None
    if entry is not None:  # a model found without config has no config file
        files += [f for f in (entry.config_file, entry.model_path) if f is not None]
    out: list[Any] = []
    for path in files:
        try:
            st = path.stat()
            out.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(path), None))
    return tuple(out)
