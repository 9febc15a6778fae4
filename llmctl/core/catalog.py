"""The catalog's records: one ModelEntry per model llmctl can switch to (or lists as
unavailable, with its error), and the Catalog that holds them. Plain data: discovery.py fills
it, aliases.py checks its names, everyone else reads it (and never changes it: catalog_memo.py
hands the same catalog to every caller while nothing on disk changed).
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
    # every path whose change could change this catalog: the directories walked, the config
    # files, the models' files, the configured roots (catalog_memo.py stats them)
    watched: list[Path] = field(default_factory=list, repr=False, compare=False)

    _index: dict[str, ModelEntry] = field(default_factory=dict, repr=False, compare=False)
    _indexed: int = field(default=-1, repr=False, compare=False)

    def by_id(self, model_id: str) -> ModelEntry | None:
        """The (first) entry with that id: one dict lookup (listings ask once per model),
        the index rebuilt when entries were added since."""
        if self._indexed != len(self.entries):
            self._index = {}
            for entry in self.entries:
                if entry.id is not None:
                    self._index.setdefault(entry.id, entry)
            self._indexed = len(self.entries)
        return self._index.get(model_id)

    @property
    def ids(self) -> list[str]:
        return [e.key for e in self.entries]
