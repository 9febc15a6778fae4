"""`llmctl pull REPO[:QUANT|FILE]`: download a GGUF model from Hugging Face and register it.

The download goes through huggingface_hub (hf_fetch.py): HF_TOKEN, HF_ENDPOINT, HF_HOME /
HF_HUB_CACHE and its cache layout all apply (a file pulled once is never fetched again, and tools
that share the cache share the file), and an interrupted file is continued by the next run from
the partial blob kept in the cache. What this module adds:

- choosing the files: `pick` turns `:Q4_K_M` (or a file name, or nothing: Q4_K_M if the repo has
  it, else its only quantisation) into every shard of one model plus the repo's projector, and
  lists what the repo has when the choice is missing or ambiguous;
- free space for the whole set of files, checked before the first byte (not shard by shard);
- registering, only once every file is complete and verified against the hub's sha256 (a file
  the hub lists without one, i.e. not in LFS, against the size it lists; each `verified`
  event says which: `method`) (register.py, as `llmctl add`), so a failed pull never leaves
  half a model listed;
- progress as events (dicts) for the CLI's bar, its plain lines, `--json` and `POST /pull`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.core import hf_fetch, model_ids
from llmctl.core.hf_fetch import short
from llmctl.core.paths import Paths
from llmctl.core.register import AlreadyRegistered, Registered, RegisterError, register

Emit = Callable[[dict[str, Any]], None]
DEFAULT_QUANT = "Q4_K_M"  # what llama.cpp's own `-hf repo` picks when none is named
# when a repo has several projectors, the first of these it has (F16 is what most ship)
PROJECTOR_PREFERENCE = ("F16", "BF16", "Q8_0", "F32")
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PullError(Exception):
    """A pull that cannot go on; `code` is for exit codes and the API, `choices` lists what the
    repository offers when the choice was wrong."""

    def __init__(self, code: str, message: str, choices: list[str] | None = None):
        super().__init__(message)
        self.code, self.message, self.choices = code, message, choices or []


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repository, e.g. "Q4_K_M/Model-Q4_K_M-00001-of-00002.gguf"
    size: int | None = None
    sha256: str | None = None  # of an LFS file, as the hub lists it


@dataclass
class Plan:
    repo: str
    revision: str | None
    files: list[RemoteFile]  # the model's shards in order (one file when not split)
    projector: RemoteFile | None
    label: str  # the quantisation (or file) chosen

    @property
    def all_files(self) -> list[RemoteFile]:
        return self.files + ([self.projector] if self.projector else [])

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.all_files)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`org/name[:QUANT|FILE]` -> (repo, selector)."""
    repo, _, selector = spec.strip().partition(":")
    if not _REPO_RE.fullmatch(repo):
        raise PullError("bad_spec", f"{spec!r} is not a Hugging Face repository: write "
                        "org/name, optionally with :QUANT or :FILE (e.g. "
                        "unsloth/Qwen3-8B-GGUF:Q4_K_M)")
    return repo, selector or None


# --- choosing files -------------------------------------------------------------------------


def _models_of(files: list[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """The repository's models, keyed by their path without `.gguf` and shard suffix."""
    models: dict[str, list[RemoteFile]] = {}
    for f in files:
        name = f.path.rsplit("/", 1)[-1]
        if not name.lower().endswith(".gguf") or model_ids.is_projector(name):
            continue
        key = f.path[: len(f.path) - len(name)] + model_ids.stem(name)
        models.setdefault(key, []).append(f)
    for shards in models.values():
        shards.sort(key=lambda f: f.path)
    return models


def labels(files: list[RemoteFile]) -> dict[str, str]:
    """A short label (usually the quantisation) for each model of a repository: its key with
    the part every key shares cut off at a separator."""
    keys = sorted(_models_of(files))
    names = {k: k.rsplit("/", 1)[-1] for k in keys}  # folders often repeat the quantisation
    if len(set(names.values())) < len(keys):
        names = {k: k for k in keys}
    if len(keys) <= 1:
        return names
    prefix = os.path.commonprefix(list(names.values()))
    cut = max(prefix.rfind(c) for c in "-_./") + 1
    return {k: name[cut:] or name for k, name in names.items()}


def _has_token(text: str, token: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(token)}(?![A-Za-z0-9_])", text, re.I) \
        is not None


def pick(repo: str, files: list[RemoteFile], selector: str | None,
         revision: str | None = None) -> Plan:
    """The files to download for `selector` (a quantisation, a file name, or None)."""
    models = _models_of(files)
    if not models:
        raise PullError("not_found", f"{repo} has no .gguf model files (is it a GGUF repo? "
                        "they are usually named ...-GGUF)")
    named = labels(files)
    available = sorted(named.values())
    if selector is None:
        wanted = [k for k in models if _has_token(k, DEFAULT_QUANT)]
        if not wanted and len(models) == 1:
            wanted = list(models)
        if not wanted:
            raise PullError("ambiguous", f"{repo} has several quantisations; name one: "
                            f"{', '.join(f'{repo}:{a}' for a in available)}", available)
    elif selector.lower().endswith(".gguf"):
        wanted = [k for k, shards in models.items()
                  if any(selector in (f.path, f.path.rsplit("/", 1)[-1]) for f in shards)]
        if not wanted:
            raise PullError("not_found", f"{repo} has no model file {selector}; it has: "
                            f"{', '.join(f.path for s in models.values() for f in s)}",
                            available)
    else:
        wanted = [k for k in models if _has_token(k, selector)]
        if not wanted:
            raise PullError("not_found", f"{repo} has no {selector} quantisation; it has: "
                            f"{', '.join(available)} (pull {repo}:<one of them>)", available)
    if len(wanted) > 1:
        choices = sorted(named[k] for k in wanted)
        raise PullError("ambiguous", f"{selector or DEFAULT_QUANT} matches several models in "
                        f"{repo}: {', '.join(choices)}; name one exactly", choices)
    key = wanted[0]
    shards = models[key]
    _check_shards(repo, shards)
    quant = selector if selector and not selector.lower().endswith(".gguf") else None
    return Plan(repo=repo, revision=revision, files=shards, projector=_projector(files),
                label=quant or named[key])


def _check_shards(repo: str, shards: list[RemoteFile]) -> None:
    split = model_ids.shard_of(shards[0].path.rsplit("/", 1)[-1])
    if split is None:
        if len(shards) > 1:  # e.g. x.gguf and x-00001-of-00002.gguf: not one model
            raise PullError("ambiguous", f"{repo} has several files for one model: "
                            f"{', '.join(f.path for f in shards)}; name one with :FILE")
        return
    count = split[2]
    numbers = [model_ids.shard_of(f.path.rsplit("/", 1)[-1]) for f in shards]
    if sorted(n[1] for n in numbers if n) != list(range(1, count + 1)):
        raise PullError("incomplete", f"{repo} lists only {len(shards)} of the {count} shards "
                        f"of {shards[0].path}; it cannot be loaded")


def _projector(files: list[RemoteFile]) -> RemoteFile | None:
    projectors = sorted((f for f in files if model_ids.is_projector(f.path.rsplit("/", 1)[-1])
                         and f.path.lower().endswith(".gguf")), key=lambda f: f.path)
    for quant in PROJECTOR_PREFERENCE:
        for f in projectors:
            if _has_token(f.path, quant):
                return f
    return projectors[0] if projectors else None


# --- downloading ----------------------------------------------------------------------------


def pull(paths: Paths, spec: str, emit: Emit, *, model_id: str | None = None,
         name: str | None = None) -> Registered | None:
    """Download, verify and register; `emit` gets every event (the last is `done`). None when
    the files already were a registered model. Raises PullError."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, selector = parse_spec(spec)
    try:
        info = HfApi().model_info(repo, files_metadata=True)
    except GatedRepoError:
        raise PullError("forbidden", f"{repo} is gated: accept its terms on the hub and set "
                        "HF_TOKEN") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise PullError("not_found", f"no repository {repo} on the hub (a private or gated one "
                        "needs HF_TOKEN)") from None
    except HfHubHTTPError as e:
        raise PullError("hub_error", f"the hub refused to list {repo}: {short(e)}") from None
    except Exception as e:  # the HTTP client's own connection errors have no common base here
        raise PullError("hub_unreachable", f"cannot reach the hub to list {repo} "
                        f"({short(e)}); check the network or HF_ENDPOINT, or fetch the "
                        ".gguf some other way and `llmctl add` it") from None
    files = [RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None)
             for s in info.siblings or []]
    plan = pick(repo, files, selector, info.sha)
    emit({"event": "resolved", "repo": repo, "revision": plan.revision, "quant": plan.label,
          "files": [{"file": f.path, "size": f.size} for f in plan.files],
          "projector": plan.projector.path if plan.projector else None,
          "total_bytes": plan.total_bytes})
    try:  # the whole set, before the first byte: not shard by shard
        hf_fetch.check_space_for_all(repo, plan.revision, [(f.path, f.size, f.sha256)
                                                           for f in plan.all_files])
    except hf_fetch.FetchError as e:
        raise PullError(e.code, e.message) from None
    local: list[Path] = []
    for index, remote in enumerate(plan.all_files, 1):
        local.append(_fetch(plan, remote, index, emit))
    try:
        done = register(paths, local[0], model_id=model_id, name=name, repo=repo,
                        projector=local[-1] if plan.projector else None,
                        description=f"pulled from {repo} ({plan.label}) at "
                        f"{(plan.revision or 'main')[:12]}")
    except AlreadyRegistered as e:  # pulled before: the same files, verified again
        emit({"event": "done", "id": e.model_id, "already": True,
              "next": f"llmctl switch {e.model_id}"})
        return None
    except RegisterError as e:
        raise PullError("register_failed", f"downloaded, but not registered: {e}") from None
    emit({"event": "done", "id": done.id, "name": done.name, "config_file": str(done.config_file),
          "next": f"llmctl switch {done.id}"})
    return done


def _fetch(plan: Plan, remote: RemoteFile, index: int, emit: Emit) -> Path:
    emit({"event": "download", "file": remote.path, "index": index, "count": len(plan.all_files),
          "size": remote.size})
    try:
        return hf_fetch.fetch(plan.repo, remote.path, plan.revision, remote.sha256, emit,
                              listed_size=remote.size)
    except hf_fetch.FetchError as e:
        raise PullError(e.code, e.message) from None
