"""Whether a model's KV cache is kept across stops, and why (or why not), in words.

Decided from the merged config and the GGUF's metadata, the same way in the lifecycle worker
(which launches with the flags this asks for) and in the proxy (`llmctl inspect`):

- `cache.persist: off` keeps nothing.
- A projector (multimodal) is not kept: llama-server refuses slot actions then (501).
- Embedding and reranking models hold no conversation: nothing to keep.
- Sliding-window attention (`<arch>.attention.sliding_window` in the GGUF; Gemma 2/3,
  gpt-oss, ...) restores "successfully" and then reuses nothing unless llama-server runs with
  `--swa-full`, which keeps the whole context for those layers too. `llama.swa_full` decides
  if set; under auto the extra KV memory it costs (below) must stay under cache.swa_full_max.
- A model whose restores reused nothing, twice in a row, is not kept (store.py remembers it
  per fingerprint; `llmctl cache clear MODEL` forgets it).

KV memory is estimated as llama.cpp allocates it: per layer and token, K and V rows of
`key_length`/`value_length` × `head_count_kv` elements of the cache type's size. Which layers
slide is hard-coded in llama.cpp for some architectures, so the estimate takes every layer as
sliding: an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.core.gguf import GGUFError, read_metadata

MIB = 1024 * 1024
UBATCH = 512  # llama-server's default; a sliding-window cache holds window + ubatch cells

# bytes per element of each KV cache type (block size / elements per block)
TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
              "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32}


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str  # what the user reads, kept or not
    swa_full: bool = False
    bytes_per_token: float = 0.0  # KV bytes one cached token takes (estimate)


def decide(cfg: dict[str, Any], model_path: Path | str,
           disabled: str | None = None) -> Decision:
    """`disabled`: why store.py stopped keeping this model's fingerprint, if it did."""
    cache, llama = cfg["cache"], cfg["llama"]
    try:
        meta = read_metadata(model_path)
    except (OSError, GGUFError):
        # llama-server will refuse such a file too; what it does load is judged by its
        # own answers (a restore that reuses nothing stops the saving)
        meta = {}
    shape = kv_shape(meta, cfg)
    per_token = shape.bytes_per_token(llama)
    if cache["persist"] == "off":
        return Decision(False, "cache.persist is off")
    if cfg.get("mmproj_file"):
        return Decision(False, "it runs with a multimodal projector, and llama-server refuses "
                        "to save or restore slots then")
    if llama["embeddings"] or llama["reranking"]:
        return Decision(False, "an embedding or reranking model holds no conversation")
    if disabled:
        return Decision(False, disabled)
    if not shape.window or shape.window >= shape.ctx:
        return Decision(True, "saved when it stops, restored when it loads",
                        bytes_per_token=per_token)
    extra = swa_full_extra_bytes(shape, llama)
    cost = f"{extra / MIB:.0f} MiB more KV memory"
    window = f"sliding-window attention (window {shape.window})"
    swa_full = llama["swa_full"]
    if swa_full is True:
        return Decision(True, f"runs with --swa-full (llama.swa_full: true; {cost})", True,
                        per_token)
    if swa_full is False:
        return Decision(False, f"{window} without --swa-full (llama.swa_full: false): a "
                        "restored cache would be processed again from scratch")
    if extra <= cache["swa_full_max"] * MIB:
        return Decision(True, f"runs with --swa-full, which {window} needs ({cost}, under "
                        f"cache.swa_full_max {cache['swa_full_max']} MiB)", True, per_token)
    return Decision(False, f"{window} needs --swa-full to restore, which would cost {cost}, "
                    f"over cache.swa_full_max {cache['swa_full_max']} MiB; raise it or set "
                    "llama.swa_full: true")


@dataclass(frozen=True)
class KvShape:
    layers: int
    k_width: int  # elements per token and layer
    v_width: int
    ctx: int
    window: int

    def bytes_per_token(self, llama: dict[str, Any]) -> float:
        k = TYPE_BYTES.get(str(llama["cache_type_k"]).lower(), 2.0)
        v = TYPE_BYTES.get(str(llama["cache_type_v"]).lower(), 2.0)
        return self.layers * (self.k_width * k + self.v_width * v)


def kv_shape(meta: dict[str, Any], cfg: dict[str, Any]) -> KvShape:
    arch = str(meta.get("general.architecture") or "")

    def num(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, list):  # per-layer arrays: the widest layer
            value = max((v for v in value if isinstance(v, int)), default=default)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    embd, heads = num("embedding_length"), num("attention.head_count", 1) or 1
    kv_heads = num("attention.head_count_kv", heads) or heads
    k_len = num("attention.key_length", embd // heads)
    v_len = num("attention.value_length", embd // heads)
    ctx = int(cfg["llama"]["ctx_size"]) or num("context_length", 4096)
    return KvShape(num("block_count"), k_len * kv_heads, v_len * kv_heads, ctx,
                   num("attention.sliding_window"))


def swa_full_extra_bytes(shape: KvShape, llama: dict[str, Any]) -> float:
    """What --swa-full adds: the sliding layers grow from window + ubatch cells (per slot)
    to the whole context."""
    slots = max(1, int(llama["parallel"]))
    small = min(shape.ctx, shape.window * slots + UBATCH)
    return (shape.ctx - small) * shape.bytes_per_token(llama)
