"""Model names: each model's id plus the aliases its config.yaml lists, as one index.

Request routing (`"model": "coder"`) and `llmctl switch coder` both look names up here. A name
means one model: an alias that is another model's id, or an earlier model's alias, is a config
error of the model that lists it (it becomes unavailable, like a duplicate id), never a silent
choice between two models.
"""

from __future__ import annotations

from llmctl.core.catalog import Catalog, ModelEntry
from llmctl.core.config import ConfigError, load_yaml


def check_aliases(catalog: Catalog) -> None:
    """Mark every model whose aliases collide as unavailable, with a located error."""
    ids = {e.id: e for e in catalog.entries if e.id is not None}
    claimed: dict[str, ModelEntry] = {}
    for entry in catalog.entries:
        if entry.id is None or not entry.config:
            continue
        for alias in entry.config["aliases"]:
            owner = ids.get(alias) or claimed.get(alias)
            if owner is not None and owner is not entry:
                what = "the id" if alias in ids else "an alias"
                entry.error = _located(entry, f"{alias!r} is already {what} of {owner.id} "
                                              f"({owner.config_file}); names must be unique")
                break
        else:
            claimed.update(dict.fromkeys(entry.config["aliases"], entry))


def _located(entry: ModelEntry, message: str) -> str:
    if entry.config_file is None:  # found without a config (discovery): it lists no aliases
        return message
    try:
        return str(load_yaml(entry.config_file).error("aliases", message))
    except ConfigError:  # the file changed under us: the message without a line
        return f"{entry.config_file}: aliases: {message}"


def name_index(catalog: Catalog) -> dict[str, str]:
    """Every name a request may use -> the model id it means. Unavailable models are kept (a
    request naming one deserves "unavailable", not "unknown"); colliding aliases are not."""
    index: dict[str, str] = {}
    for entry in catalog.entries:
        if entry.id is None:
            continue
        index[entry.id] = entry.id
        if entry.config and entry.available:
            index.update(dict.fromkeys(entry.config["aliases"], entry.id))
    return index
