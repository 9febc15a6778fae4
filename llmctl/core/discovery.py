"""Model discovery: every `$LLMCTL_HOME/gguf/<dir>/config.yaml` is one model.

A broken model never hides the others: it is listed as unavailable with the error that says
which file, line and key to fix. Model files must stay inside their model's directory (a
symlink placed there may point anywhere: that is the user's own choice).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.core.aliases import check_aliases
from llmctl.core.config import ConfigError, GlobalConfig, load_model_file, merge_model

CONFIG_NAMES = ("config.yaml", "config.yml")


@dataclass
class ModelEntry:
    key: str  # the id when valid, else the directory name (for display only)
    directory: Path
    config_file: Path
    id: str | None = None
    name: str | None = None
    model_path: Path | None = None
    config: dict[str, Any] | None = None  # merged with the global config
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None

    def summary(self) -> dict[str, Any]:
        size = None
        if self.model_path is not None:
            try:
                size = self.model_path.stat().st_size
            except OSError:
                pass
        return {
            "id": self.key, "name": self.name or self.key, "available": self.available,
            "error": self.error, "directory": str(self.directory),
            "config_file": str(self.config_file),
            "file": str(self.model_path) if self.model_path else None, "size_bytes": size,
        }


@dataclass
class Catalog:
    entries: list[ModelEntry] = field(default_factory=list)

    def by_id(self, model_id: str) -> ModelEntry | None:
        for entry in self.entries:
            if entry.id == model_id:
                return entry
        return None

    @property
    def ids(self) -> list[str]:
        return [e.key for e in self.entries]


def discover(models_dir: Path, global_cfg: GlobalConfig) -> Catalog:
    catalog = Catalog()
    try:
        dirs = sorted(p for p in models_dir.iterdir() if p.is_dir())
    except FileNotFoundError:
        return catalog
    except OSError as e:
        raise ConfigError(models_dir, None, None, f"cannot list models: {e.strerror}") from None
    seen: dict[str, ModelEntry] = {}
    for directory in dirs:
        config_file = next((directory / n for n in CONFIG_NAMES if (directory / n).is_file()),
                           None)
        if config_file is None:
            continue
        entry = _load_entry(directory, config_file, global_cfg)
        if entry.id is not None and entry.id in seen:
            first = seen[entry.id]
            entry.error = (f"{config_file}: id: {entry.id!r} is already used by "
                           f"{first.config_file}; ids must be unique")
            entry.key = f"{directory.name} (duplicate {entry.id})"
            entry.id = None
        elif entry.id is not None:
            seen[entry.id] = entry
        catalog.entries.append(entry)
    check_aliases(catalog)
    return catalog


def _load_entry(directory: Path, config_file: Path, global_cfg: GlobalConfig) -> ModelEntry:
    entry = ModelEntry(key=directory.name, directory=directory, config_file=config_file)
    try:
        doc, data = load_model_file(config_file)
    except ConfigError as e:
        entry.error = str(e)
        return entry
    entry.id = entry.key = data["id"]
    entry.name = data.get("name", data["id"])
    model_file = str(data["model_file"])
    relative = os.path.normpath(model_file)
    if os.path.isabs(model_file) or relative == ".." or relative.startswith(".." + os.sep):
        entry.error = str(doc.error("model_file", (
            f"{model_file!r} must be a file name relative to {directory} "
            "(place the GGUF or a symlink to it there)")))
        return entry
    entry.model_path = directory / relative
    entry.config = merge_model(global_cfg, data)
    if not entry.model_path.is_file():
        entry.error = str(doc.error("model_file", f"{entry.model_path} does not exist"))
    return entry
