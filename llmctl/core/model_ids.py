"""Model ids and display names derived from file names, for GGUFs that have no config.yaml.

An id must be stable (the same file always gets the same id, so `llmctl switch` and scripts keep
working), readable, and valid for MODEL_ID_RE. The rule: the file name without `.gguf` and
without a shard suffix (`-00001-of-00003`), lower-cased, with every run of characters an id
cannot hold turned into one `-`. The quantisation stays in: `Qwen3-8B-Q4_K_M.gguf` is
`qwen3-8b-q4_k_m`, so two quantisations of one model never share an id.

Files from a Hugging Face repository also carry the repository's name when the file name does not
already start with it (`TheBloke/Mistral-7B-GGUF` + `model.Q4_K_M.gguf` is `mistral-7b-model.q4_k_m`).
This module only computes names; discovery decides what happens when two files want one id.
"""

from __future__ import annotations

import re

MAX_ID = 128
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.I)
_NOT_ID = re.compile(r"[^a-z0-9._+-]+")
_REPO_SUFFIX = re.compile(r"[-_.]gguf$", re.I)


def shard_of(filename: str) -> tuple[str, int, int] | None:
    """(prefix, number, count) for llama.cpp's split naming `<prefix>-00001-of-00003.gguf`."""
    m = _SHARD_RE.fullmatch(filename)
    if m is None:
        return None
    return m.group("prefix"), int(m.group("no")), int(m.group("count"))


def shard_name(prefix: str, number: int, count: int) -> str:
    return f"{prefix}-{number:05d}-of-{count:05d}.gguf"


def is_projector(filename: str) -> bool:
    """llama.cpp's convention (also its router's): a multimodal projector's name starts with
    `mmproj`; it is never a model of its own."""
    return filename.lower().startswith("mmproj")


def stem(filename: str) -> str:
    """The file name without `.gguf` and without the shard suffix."""
    shard = shard_of(filename)
    if shard is not None:
        return shard[0]
    return filename[:-5] if filename.lower().endswith(".gguf") else filename


def sanitize(text: str) -> str:
    """Any text as a valid id (never empty)."""
    out = _NOT_ID.sub("-", text.lower())
    out = re.sub(r"-{2,}", "-", out).strip("-._+")[:MAX_ID].rstrip("-._+")
    return out or "model"


def file_id(filename: str) -> str:
    return sanitize(stem(filename))


def repo_file_id(repo: str, filename: str) -> str:
    """The id of `filename` from Hugging Face repository `repo` (`org/name`)."""
    base = sanitize(_REPO_SUFFIX.sub("", repo.rsplit("/", 1)[-1]))
    own = file_id(filename)
    if _squash(own).startswith(_squash(base)):
        return own
    return sanitize(f"{base}-{own}")


def with_suffix(model_id: str, n: int) -> str:
    """The n-th alternative of an id that is taken (`x-2`, `x-3`, ...), still within MAX_ID."""
    suffix = f"-{n}"
    return model_id[:MAX_ID - len(suffix)] + suffix


def display_name(general_name: str | None, quantization: str | None, filename: str) -> str:
    """What `llmctl models` shows: the GGUF's general.name with its quantisation (most repos
    name every quantisation alike), else the file's stem."""
    name = (general_name or "").strip() or stem(filename)
    if quantization and _squash(quantization) not in _squash(name):
        name = f"{name} {quantization}"
    return name


def _squash(text: str) -> str:
    return "".join(c for c in text.casefold() if c.isalnum())
