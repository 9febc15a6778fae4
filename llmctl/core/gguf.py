"""Cheap facts from a GGUF file's header: architecture, name, quantization, trained context and
parameter count. Reads only the metadata and tensor table (never the weights), through mmap, and
caches the answer by (path, size, mtime) so listing models stays fast."""

from __future__ import annotations

import mmap
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

MAGIC = b"GGUF"

# gguf value types -> struct format (scalars only; 8 = string, 9 = array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")

# llama.cpp's LLAMA_FTYPE values, named as people write them
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}

_WANTED = ("general.architecture", "general.name", "general.file_type", "general.size_label",
           "general.parameter_count", "split.count")


class GGUFError(Exception):
    pass


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes):
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        n = self.take("Q")
        raw = self.buf[self.pos:self.pos + n]
        if len(raw) != n:
            raise GGUFError("truncated string")
        self.pos += n
        return raw.decode("utf-8", "replace")

    def skip_string(self) -> None:
        length = self.take("Q")
        self.pos += length

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            if keep:
                return self.string()
            self.skip_string()
            return None
        if vtype == _ARRAY:
            etype, count = self.take("I"), self.take("Q")
            if etype in _SCALARS:  # fixed size: jump over
                self.pos += count * struct.calcsize("<" + _SCALARS[etype])
            elif etype == _STRING:  # a vocabulary (150k+ tokens): the tightest loop we can
                buf, pos, length = self.buf, self.pos, _U64.unpack_from
                for _ in range(count):
                    pos += 8 + length(buf, pos)[0]
                self.pos = pos
            else:
                for _ in range(count):
                    self.value(etype, keep=False)
            return None
        raise GGUFError(f"unknown value type {vtype}")


def read_facts(path: Path | str) -> dict[str, Any]:
    """Facts about one GGUF file; raises GGUFError (or OSError) when it is not one."""
    st = os.stat(path)
    return dict(_read_cached(str(path), st.st_size, st.st_mtime_ns))


@lru_cache(maxsize=256)
def _read_cached(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, Any], ...]:
    facts = _read_header(path, size, _parse)
    facts["size_bytes"] = size
    return tuple(facts.items())


def _read_header(path: str, size: int, parse: Any) -> Any:
    """`parse(reader)` over the mapped file, once it is known to be a GGUF; every malformed
    header becomes a GGUFError."""
    with open(path, "rb") as f:
        if size < 24:
            raise GGUFError("file too small to be GGUF")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != MAGIC:
                raise GGUFError("not a GGUF file (bad magic)")
            try:
                return parse(_Reader(buf))
            except (struct.error, GGUFError) as e:
                raise GGUFError(f"corrupt or truncated GGUF header ({e})") from None


def _parse(r: _Reader) -> dict[str, Any]:
    r.pos = 4
    version = r.take("I")
    if version < 2:
        raise GGUFError(f"GGUF version {version} is too old")
    n_tensors, n_kv = r.take("Q"), r.take("Q")
    kv: dict[str, Any] = {}
    has_template = False
    for _ in range(n_kv):
        key = r.string()
        vtype = r.take("I")
        has_template = has_template or key == "tokenizer.chat_template"
        keep = key in _WANTED or key.endswith((".context_length", ".block_count",
                                               ".expert_count"))
        value = r.value(vtype, keep)
        if keep:
            kv[key] = value
    params = 0
    for _ in range(n_tensors):
        r.skip_string()
        n_dims = r.take("I")
        count = 1
        for _ in range(n_dims):
            count *= r.take("Q")
        r.pos += 4 + 8  # type, offset
        params += count
    if r.pos > len(r.buf):
        raise GGUFError("the tensor table runs past the end of the file")
    arch = kv.get("general.architecture")
    facts: dict[str, Any] = {"gguf_version": version, "architecture": arch,
                             "name": kv.get("general.name"), "tensors": n_tensors,
                             "parameters": kv.get("general.parameter_count") or params,
                             "chat_template": has_template}
    if (ftype := kv.get("general.file_type")) is not None:
        facts["quantization"] = FILE_TYPES.get(ftype, f"type {ftype}")
    if arch:
        for short in ("context_length", "block_count", "expert_count"):
            if f"{arch}.{short}" in kv:
                facts[short] = kv[f"{arch}.{short}"]
    if "general.size_label" in kv:
        facts["size_label"] = kv["general.size_label"]
    if "split.count" in kv:  # the first of llama.cpp's gguf-split shards
        facts["split_count"] = kv["split.count"]
    return facts



def read_layout(path: Path | str) -> dict[str, Any]:
    """What a memory estimate needs from a header: every number-valued key, the length of
    every array (a vocabulary's size), the architecture, and where the tensor data starts
    (all that follows is weights)."""
    st = os.stat(path)
    return _read_header(str(path), st.st_size, _parse_layout)


def _parse_layout(r: _Reader) -> dict[str, Any]:
    r.pos = 8
    n_tensors, n_kv = r.take("Q"), r.take("Q")
    numbers: dict[str, Any] = {}
    arrays: dict[str, int] = {}
    for _ in range(n_kv):
        key = r.string()
        vtype = r.take("I")
        if vtype == _ARRAY:
            at = r.pos
            r.take("I")
            arrays[key] = r.take("Q")
            r.pos = at
            r.value(vtype, keep=False)
        else:
            value = r.value(vtype, keep=key == "general.architecture")
            if value is not None:
                numbers[key] = value
    for _ in range(n_tensors):
        r.skip_string()
        n_dims = r.take("I")
        r.pos += 8 * n_dims + 4 + 8  # the dimensions, the type, the offset
    alignment = numbers.get("general.alignment") or 32
    if r.pos > len(r.buf):
        raise GGUFError("the tensor table runs past the end of the file")
    return {"numbers": numbers, "arrays": arrays, "tensors": n_tensors,
            "data_offset": -(-r.pos // alignment) * alignment}


def read_metadata(path: Path | str) -> dict[str, Any]:
    """Every key/value pair of a GGUF header (for Ollama's /api/show): strings and numbers in
    full, arrays (the vocabulary, merges, ...) as empty lists, as Ollama shows them."""
    st = os.stat(path)
    return dict(_read_metadata_cached(str(path), st.st_size, st.st_mtime_ns))


@lru_cache(maxsize=32)
def _read_metadata_cached(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, Any], ...]:
    return _read_header(path, size, _parse_metadata)


def _parse_metadata(r: _Reader) -> tuple[tuple[str, Any], ...]:
    r.pos = 16  # magic, version, tensor count
    kv: list[tuple[str, Any]] = []
    for _ in range(r.take("Q")):
        key = r.string()
        vtype = r.take("I")
        value = r.value(vtype, keep=True)  # arrays are always skipped
        kv.append((key, [] if vtype == _ARRAY else value))
    return tuple(kv)
