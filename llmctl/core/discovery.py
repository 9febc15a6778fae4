"""Model discovery: the catalog of every model llmctl can switch to, and where each came from.

Sources, in the order they claim ids:

1. `config` — a `config.yaml` in a directory under `$LLMCTL_HOME/gguf/`. It names its files
   (`model_file`, optional `mmproj_file`, `draft_model_file`, all inside its directory; a symlink
   placed there may point anywhere: that is the user's own choice) and may leave out `id` and
   `model_file` when the directory holds exactly one model. Its settings override everything,
   and the directory is that one model: its other GGUFs are not models of their own.
2. `file` — any other `.gguf` under `gguf/` (scan.py groups shards and projectors).
3. `model_dir` — the same in each `daemon.model_dirs` entry, in the order listed, read-only.

A file that a config already uses, or that two trees reach, is one model, listed once. Ids of
files derive from their names (model_ids.py); when one is taken, the later file (in the order
above, then by path) gets `<id>-2`, `-3`, ... and its entry says which file holds the id. A
duplicate id written in two config files is an error on the second, as ever. A broken model is
listed as unavailable with the error and never hides the others.

Pi metadata is derived from the file (trained context, clamped to `llama.ctx_size` when set;
image input when a projector is present) between the global config and the model's own.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from llmctl.core import model_ids
from llmctl.core.aliases import check_aliases
from llmctl.core.catalog import Catalog, ModelEntry
from llmctl.core.config import (
    ConfigError,
    GlobalConfig,
    LoadedYaml,
    load_model_file,
    merge_model,
    model_workers,
)
from llmctl.core.scan import CONFIG_NAMES, FoundModel, HeaderCache, header_cache, scan

RACY_NS = 2_000_000_000  # a file younger than this may change again within one mtime tick


def discover(models_dir: Path, global_cfg: GlobalConfig, cache_file: Path | None = None,
             ) -> Catalog:
    """The catalog. `cache_file` keeps GGUF header facts across processes (scan.HeaderCache)."""
    cache = header_cache(cache_file)
    catalog = Catalog()
    own = scan(models_dir, configs=True)
    catalog.problems += own.problems
    claimed: set[tuple[int, int] | str] = set()  # files that already belong to a model
    taken: dict[str, ModelEntry] = {}
    # the walk's models by directory and by path: one lookup per config file, not a pass
    # over every model (which made discovery quadratic in the number of models)
    by_dir: dict[Path, list[FoundModel]] = {}
    by_path: dict[Path, FoundModel] = {}
    for model in own.models:
        by_dir.setdefault(model.directory, []).append(model)
        by_path.setdefault(model.path, model)
    for config_file in _one_per_directory(own.config_files):
        entry = _config_entry(config_file, by_dir.get(config_file.parent, []), by_path,
                              global_cfg, cache)
        if entry.id is not None and entry.id in taken:
            first = taken[entry.id]
            entry.error = (f"{config_file}: id: {entry.id!r} is already used by "
                           f"{first.config_file}; ids must be unique")
            entry.key = f"{config_file.parent.name} (duplicate {entry.id})"
            entry.id = None
        elif entry.id is not None:
            taken[entry.id] = entry
        # a directory with a config.yaml is that one model, even while the file is broken
        beside = [m.path for m in by_dir.get(config_file.parent, [])]
        claimed.update(_real(p) for p in (entry.model_path, entry.mmproj_path, entry.draft_path,
                                          *entry.shards, *beside) if p is not None)
        catalog.entries.append(entry)
    found: list[tuple[FoundModel, str]] = [(m, "file") for m in own.models]
    walked = list(own.watched)
    for root in _model_dirs(global_cfg, catalog):
        tree = scan(root)
        catalog.problems += tree.problems
        walked += tree.watched
        found += [(m, "model_dir") for m in tree.models]
    for model, source in found:
        if _real(model.path) in claimed:
            continue
        claimed.update(_real(p) for p in model.shards)
        entry = _file_entry(model, source, global_cfg, cache)
        _assign_id(entry, taken)
        catalog.entries.append(entry)
    check_aliases(catalog)
    cache.save()
    catalog.watched = _watched(models_dir, walked, catalog, global_cfg)
    return catalog


def _watched(models_dir: Path, walked: list[Path], catalog: Catalog,
             global_cfg: GlobalConfig) -> list[Path]:
    """What catalog_memo.py must stat to know that discovery would give the same catalog:
    the directories walked (an added, removed or renamed entry changes a directory's
    mtime), the configured roots (one that does not exist yet may appear), every config
    file and every file a model is made of (an edit in place changes only the file)."""
    paths = [models_dir, *walked]
    for raw in global_cfg.data["daemon"]["model_dirs"]:
        paths.append(Path(os.path.expandvars(os.path.expanduser(str(raw)))))
    for e in catalog.entries:
        paths += [p for p in (e.config_file, e.model_path, e.mmproj_path, e.draft_path)
                  if p is not None]
        paths += e.shards
    return paths


def _one_per_directory(config_files: list[Path]) -> list[Path]:
    chosen: dict[Path, Path] = {}
    for f in sorted(config_files, key=lambda p: (p.parent, CONFIG_NAMES.index(p.name))):
        chosen.setdefault(f.parent, f)
    return list(chosen.values())


def _model_dirs(global_cfg: GlobalConfig, catalog: Catalog) -> list[Path]:
    roots = []
    for raw in global_cfg.data["daemon"]["model_dirs"]:
        path = Path(os.path.expandvars(os.path.expanduser(str(raw))))
        if not path.is_absolute():
            catalog.problems.append(f"daemon.model_dirs: {raw!r} must be an absolute path "
                                    "(or start with ~)")
        elif not path.is_dir():
            catalog.problems.append(f"daemon.model_dirs: {path} is not a directory")
        else:
            roots.append(path)
    return roots


def _real(path: Path) -> tuple[int, int] | str:
    """Which file a path is (through any symlinks): cheaper than realpath, one stat."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.abspath(path)
    return st.st_dev, st.st_ino


def _assign_id(entry: ModelEntry, taken: dict[str, ModelEntry]) -> None:
    wanted = entry.key
    model_id, n = wanted, 1
    while model_id in taken:
        n += 1
        model_id = model_ids.with_suffix(wanted, n)
    if model_id != wanted:
        holder = taken[wanted]
        entry.note = (f"id {wanted} is taken by {holder.model_path or holder.config_file} "
                      f"({holder.source}), so this file got {model_id}; give it another id "
                      "with `llmctl add` or a config.yaml beside it")
        if entry.config is not None:
            entry.config["id"] = model_id
    entry.id = entry.key = model_id
    taken[model_id] = entry


# --- one model ----------------------------------------------------------------------------------


def _derived(facts: dict[str, Any] | None, ctx_size: int, projector: bool,
             global_cfg: GlobalConfig) -> dict[str, Any]:
    """What the file tells Pi: its trained context (clamped to the context llama-server will
    really have) and, with a projector, image input."""
    model: dict[str, Any] = {}
    trained = (facts or {}).get("context_length")
    if isinstance(trained, int) and trained > 0:
        window = min(trained, ctx_size) if ctx_size else trained
        model["contextWindow"] = window
        model["maxTokens"] = min(global_cfg.data["pi"]["model"]["maxTokens"], window)
    if projector:
        model["input"] = ["text", "image"]
    return {"pi": {"model": model}} if model else {}


def _file_entry(found: FoundModel, source: str, global_cfg: GlobalConfig,
                cache: HeaderCache) -> ModelEntry:
    name = found.path.name
    entry = ModelEntry(key=model_ids.repo_file_id(found.repo, name) if found.repo
                       else model_ids.file_id(name), directory=found.directory,
                       config_file=None, source=source, root=found.root, model_path=found.path,
                       shards=found.shards, mmproj_path=found.projector, note=found.note)
    if found.missing_shards:
        entry.error = (f"{found.path.parent}: missing shard(s) {', '.join(found.missing_shards)}"
                       " (an interrupted download?)")
        return entry
    entry.facts, entry.facts_error = cache.facts(found.path)
    if entry.facts_error is not None:
        entry.error = f"{found.path}: {entry.facts_error}"
        return entry
    assert entry.facts is not None
    if entry.facts.get("architecture") == "clip":
        entry.error = (f"{found.path} is a multimodal projector (architecture clip), not a "
                       "model: name it mmproj-<something>.gguf beside the model it serves")
        return entry
    entry.name = model_ids.display_name(entry.facts.get("name"), entry.facts.get("quantization"),
                                        name)
    data = {"id": entry.key, "name": entry.name, "model_file": name}
    derived = _derived(entry.facts, global_cfg.data["llama"]["ctx_size"],
                       found.projector is not None, global_cfg)
    entry.config = merge_model(global_cfg, data, derived)
    if found.projector is not None:
        entry.config["mmproj_file"] = str(found.projector)
    return entry


def _config_entry(config_file: Path, beside: list[FoundModel], models: dict[Path, FoundModel],
                  global_cfg: GlobalConfig, cache: HeaderCache) -> ModelEntry:
    directory = config_file.parent
    entry = ModelEntry(key=directory.name, directory=directory, config_file=config_file)
    try:
        doc, data = _parsed(config_file)
        found = _model_file(doc, data, directory, beside, models)
        data = {**data, "model_file": str(found.path.relative_to(directory))}
        data.setdefault("id", model_ids.file_id(found.path.name))
        entry.model_path = found.path
        entry.shards = found.shards if len(found.shards) > 1 else []
        entry.mmproj_path = (_inside(doc, directory, "mmproj_file", data["mmproj_file"])
                             if "mmproj_file" in data else found.projector)
        if "draft_model_file" in data:
            entry.draft_path = _inside(doc, directory, "draft_model_file",
                                       data["draft_model_file"])
    except ConfigError as e:
        entry.error = str(e)
        return entry
    entry.id = entry.key = data["id"]
    entry.name = data.get("name", data["id"])
    entry.facts, entry.facts_error = cache.facts(entry.model_path)
    ctx_size = data.get("llama", {}).get("ctx_size", global_cfg.data["llama"]["ctx_size"])
    derived = _derived(entry.facts, ctx_size, entry.mmproj_path is not None, global_cfg)
    entry.config = merge_model(global_cfg, data, derived)
    for key, path in (("mmproj_file", entry.mmproj_path), ("draft_model_file", entry.draft_path)):
        if path is not None:
            entry.config[key] = str(path)
    missing = [(key, p) for key, p in (("model_file", entry.model_path),
                                       ("mmproj_file", entry.mmproj_path),
                                       ("draft_model_file", entry.draft_path))
               if p is not None and not p.is_file()]
    try:
        model_workers(entry.config)
    except ValueError as e:  # a worker name not in the global `workers:`
        entry.error = str(doc.error("llama.workers", str(e)))
        return entry
    if missing:
        key, path = missing[0]
        entry.error = str(doc.error(key if key in data else "model_file",
                                    f"{path} does not exist"))
    elif found.missing_shards:
        entry.error = str(doc.error("model_file", f"missing shard(s) "
                                    f"{', '.join(found.missing_shards)} beside it"))
    return entry


_PARSED: dict[Path, tuple[Any, LoadedYaml, dict[str, Any]]] = {}
PARSED_KEPT = 8192  # config files whose parse is kept (more than any catalogue has)


def _parsed(config_file: Path) -> tuple[LoadedYaml, dict[str, Any]]:
    """load_model_file, kept while the file's stat is the same: with a thousand models, one
    edited config.yaml must not cost parsing all the others again (YAML is ~0.3 ms a file).
    The result is shared: nothing here changes it (the entry merges copies of it)."""
    try:
        st = os.stat(config_file)
        stamp: Any = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
    except OSError:
        stamp = None
    kept = _PARSED.get(config_file)
    if kept is not None and stamp is not None and kept[0] == stamp and \
            time.time_ns() - max(stamp[0], stamp[1]) > RACY_NS:
        return kept[1], kept[2]
    doc, data = load_model_file(config_file, required=())  # ConfigError: nothing kept
    _PARSED.pop(config_file, None)
    _PARSED[config_file] = (stamp, doc, data)
    while len(_PARSED) > PARSED_KEPT:
        _PARSED.pop(next(iter(_PARSED)))
    return doc, data


def _model_file(doc: LoadedYaml, data: dict[str, Any], directory: Path,
                beside: list[FoundModel], models: dict[Path, FoundModel]) -> FoundModel:
    """The model a config.yaml is about: its `model_file` (with the shards and projector the
    scan found with it), or the one model beside it."""
    if "model_file" in data:
        path = _inside(doc, directory, "model_file", data["model_file"])
        same = models.get(path)
        return same if same is not None else FoundModel(path=path, root=directory, shards=[path])
    if len(beside) == 1:
        return beside[0]
    what = (f"{len(beside)} models here ({', '.join(m.path.name for m in beside)})" if beside
            else "no .gguf file here")
    raise ConfigError(doc.file, 1, "model_file",
                      f"missing required key 'model_file' (at the top level): {what}")


def _inside(doc: LoadedYaml, directory: Path, key: str, value: Any) -> Path:
    name = str(value)
    relative = os.path.normpath(name)
    if os.path.isabs(name) or relative == ".." or relative.startswith(".." + os.sep):
        raise doc.error(key, (
            f"{name!r} must be a file name relative to {directory} "
            "(place the GGUF or a symlink to it there)"))
    return directory / relative
