"""Registering a GGUF that lives elsewhere as a model of llmctl's own: `llmctl add PATH`, and the
last step of `llmctl pull`.

It writes `$LLMCTL_HOME/gguf/<id>/config.yaml` and, beside it, a symlink to each file of the
model (every shard, and the projector found beside it), or with `move=True` moves them there.
It never copies: a move across filesystems is refused with what to do instead. The id, name and
Pi metadata come from the file (model_ids.py, the GGUF header) unless given. The directory is
built under a hidden temporary name and renamed into place, so discovery never sees half of it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmctl.core import model_ids
from llmctl.core.config import MODEL_ID_RE, ConfigError, load_global
from llmctl.core.discovery import discover
from llmctl.core.gguf import GGUFError, read_facts
from llmctl.core.paths import Paths
from llmctl.core.scan import FoundModel, group


class RegisterError(Exception):
    """The file cannot be registered; the message says why and what to do."""


class AlreadyRegistered(RegisterError):
    """The file already is a model (`model_id`): nothing to do."""

    def __init__(self, message: str, model_id: str):
        super().__init__(message)
        self.model_id = model_id


@dataclass
class Registered:
    id: str
    name: str
    directory: Path
    config_file: Path
    files: list[tuple[Path, Path]] = field(default_factory=list)  # (in gguf/<id>/, source)
    moved: bool = False
    config: dict[str, Any] = field(default_factory=dict)


def register(paths: Paths, source: Path, *, model_id: str | None = None, name: str | None = None,
             move: bool = False, repo: str | None = None, projector: Path | None = None,
             description: str | None = None) -> Registered:
    """Register the model whose file (or any of whose shards) is `source`. `repo` names the
    Hugging Face repository it came from (for the id); `projector` overrides the one found
    beside the file."""
    found = _found(Path(os.path.abspath(os.path.expanduser(source))))
    if projector is not None:
        found.projector = projector
    try:
        facts = read_facts(found.path)
    except (GGUFError, OSError) as e:
        raise RegisterError(f"{found.path} is not a usable GGUF file: {e}") from None
    if facts.get("architecture") == "clip":
        raise RegisterError(f"{found.path} is a multimodal projector, not a model; add the "
                            "model beside it (the projector comes along)")
    model_id = model_id or (model_ids.repo_file_id(repo, found.path.name) if repo
                            else model_ids.file_id(found.path.name))
    if not MODEL_ID_RE.fullmatch(model_id):
        raise RegisterError(f"{model_id!r} is not a valid id: use letters, digits, '.', '_', "
                            "'+' or '-' (max 128), starting with a letter or digit")
    name = name or model_ids.display_name(facts.get("name"), facts.get("quantization"),
                                          found.path.name)
    _check_free(paths, model_id, found)
    target = paths.models_dir / model_id
    files = [*found.shards, *([found.projector] if found.projector else [])]
    config = _config(paths, model_id, name, found, facts, description)
    return _install(target, files, config, move)


def _found(path: Path) -> FoundModel:
    if not path.exists():
        raise RegisterError(f"{path} does not exist")
    if not path.is_file():
        raise RegisterError(f"{path} is not a file; give the .gguf file (for a split model, "
                            "any of its shards)")
    if not path.name.lower().endswith(".gguf"):
        raise RegisterError(f"{path} is not a .gguf file")
    if model_ids.is_projector(path.name):
        raise RegisterError(f"{path.name} is a multimodal projector (mmproj), not a model; add "
                            "the model beside it and the projector comes along")
    try:
        siblings = [p for p in path.parent.iterdir() if p.name.lower().endswith(".gguf")]
    except OSError as e:
        raise RegisterError(f"cannot list {path.parent}: {e.strerror}") from None
    model = next(m for m in group(siblings, path.parent) if path in m.shards)
    if model.missing_shards:
        raise RegisterError(f"{path.name} is one shard of a split model, but "
                            f"{', '.join(model.missing_shards)} are missing from {path.parent}")
    return model


def _check_free(paths: Paths, model_id: str, found: FoundModel) -> None:
    try:
        catalog = discover(paths.models_dir, load_global(paths.config_file),
                           paths.header_cache)
    except ConfigError as e:
        raise RegisterError(f"cannot read the configuration: {e}") from None
    real = os.path.realpath(found.path)
    for entry in catalog.entries:
        if entry.model_path is not None and os.path.realpath(entry.model_path) == real:
            raise AlreadyRegistered(f"{found.path} is already the model {entry.key} "
                                    f"({entry.source}: {entry.config_file or entry.model_path})",
                                    entry.key)
    target = paths.models_dir / model_id
    if os.path.lexists(target):
        raise RegisterError(f"{target} already exists; choose another id with --id")
    for entry in catalog.entries:
        if entry.id == model_id:
            raise RegisterError(f"the id {model_id} is already used by "
                                f"{entry.config_file or entry.model_path}; choose another "
                                "with --id")


def _config(paths: Paths, model_id: str, name: str, found: FoundModel, facts: dict[str, Any],
            description: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {"id": model_id, "name": name, "model_file": found.path.name}
    if found.projector is not None:
        config["mmproj_file"] = found.projector.name
    config["description"] = description or f"added by llmctl from {found.path}"
    global_cfg = load_global(paths.config_file)
    model: dict[str, Any] = {}
    trained = facts.get("context_length")
    if isinstance(trained, int) and trained > 0:
        ctx_size = global_cfg.data["llama"]["ctx_size"]
        model["contextWindow"] = min(trained, ctx_size) if ctx_size else trained
        model["maxTokens"] = min(global_cfg.data["pi"]["model"]["maxTokens"],
                                 model["contextWindow"])
    if found.projector is not None:
        model["input"] = ["text", "image"]
    if model:
        config["pi"] = {"model": model}
    return config


def _install(target: Path, files: list[Path], config: dict[str, Any], move: bool) -> Registered:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    placed: list[tuple[Path, Path]] = []
    try:
        for source in files:
            inside = staging / source.name
            if move:
                _move(source, inside)
            else:
                inside.symlink_to(source)
            placed.append((target / source.name, source))
        (staging / "config.yaml").write_text(
            "# written by llmctl; edit freely (see the README's configuration reference)\n"
            + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        os.rename(staging, target)
    except BaseException:
        if move:  # put every moved file back where it was
            for inside, source in placed:
                staging_file = staging / inside.name
                if staging_file.exists():
                    os.rename(staging_file, source)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Registered(id=config["id"], name=config["name"], directory=target,
                      config_file=target / "config.yaml", files=placed, moved=move,
                      config=config)


def _move(source: Path, destination: Path) -> None:
    if source.is_symlink():  # a relative link (as in the Hugging Face cache) would break
        raise RegisterError(f"{source} is a symlink; --move would move the link, not the "
                            "file. Leave out --move (llmctl links to it)")
    try:
        os.rename(source, destination)
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise RegisterError(
                f"{source} is on another filesystem than {destination.parent.parent}; moving "
                "it would copy the whole file. Leave out --move (llmctl links to it), or move "
                "it yourself") from None
        raise RegisterError(f"cannot move {source}: {e.strerror}") from None
