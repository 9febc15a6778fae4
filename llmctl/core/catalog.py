"""The catalog's records: one ModelEntry per model llmctl can switch to (or lists as
unavailable, with its error), and the Catalog that holds them. Plain data: discovery.py fills
it, aliases.py checks its names, everyone else reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCES = ("config", "file", "model_dir")  # where an entry came from (see discovery.py)


@dataclass
class ModelEntry:
    key: str  # the id when known, else the directory name (for display only)
    directory: Path
    config_file: Path | None  # None for a model found without config
    source: str = "config"  # one of SOURCES
    root: Path | None = None  # the scanned tree it was found in
    id: str | None = None
    name: str | None = None
    model_path: Path | None = None
    config: dict[str, Any] | None = None  # merged with the global config
    error: str | None = None
    shards: list[Path] = field(default_factory=list)
    mmproj_path: Path | None = None
    draft_path: Path | None = None
    facts: dict[str, Any] | None = None  # from the GGUF header (first shard)
    facts_error: str | None = None
    note: str | None = None  # how its id was chosen when another file wanted it, ...

    @property
    def available(self) -> bool:
        return self.error is None

    def summary(self) -> dict[str, Any]:
        size = None
        files = self.shards or ([self.model_path] if self.model_path else [])
        if files:
            try:
                size = sum(f.stat().st_size for f in files)
            except OSError:
                pass
        out = {
            "id": self.key, "name": self.name or self.key, "available": self.available,
            "error": self.error, "directory": str(self.directory),
            "config_file": str(self.config_file) if self.config_file else None,
            "file": str(self.model_path) if self.model_path else None, "size_bytes": size,
            "source": self.source, "root": str(self.root) if self.root else None,
            "shards": len(self.shards) if len(self.shards) > 1 else None,
            "mmproj": str(self.mmproj_path) if self.mmproj_path else None,
            "draft": str(self.draft_path) if self.draft_path else None,
            "note": self.note, "gguf": self.facts,
        }
        if self.facts_error:
            out["gguf_error"] = self.facts_error
        return out


@dataclass
class Catalog:
    entries: list[ModelEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # trees that could not be scanned

    def by_id(self, model_id: str) -> ModelEntry | None:
        for entry in self.entries:
            if entry.id == model_id:
                return entry
        return None

    @property
    def ids(self) -> list[str]:
        return [e.key for e in self.entries]
