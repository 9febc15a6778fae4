"""The fallback when llama-fit-params is not beside llama-server (another llama.cpp build):
arithmetic on the GGUF header, labelled `source: "estimate"` wherever it is shown.

- weights: the tensor data of every file of the model (a file's size past its header);
- context: the KV cache, n_layer x n_ctx x (K + V width) x the cache types' bytes per element,
  the widths from the header (key_length/value_length, else embedding_length / head_count,
  times head_count_kv). Sliding-window layers are counted at the full context (llama.cpp
  keeps a window's worth unless --swa-full): an upper bound for Gemma-style models. Recurrent
  models (an `ssm` block) have a fixed state instead, which this does not know: context 0;
- compute: what dominates llama.cpp's compute buffer on these builds, per micro-batch of
  n_ubatch (512) tokens: the logits (4 bytes x vocabulary), the attention mask (2 bytes x
  n_ctx) and a few activations (24 bytes x n_embd). Checked against llama-fit-params here: the
  tiny models 3 MiB for 3, the 270M starter 524 for 525, a 1M context 1025 for 1025.

Everything lands on the host: without llama.cpp's estimator the split across devices is not
known (check.py then judges the host only).
"""

from __future__ import annotations

from pathlib import Path

from llmctl.core.gguf import GGUFError, read_layout
from llmctl.daemon.memory.fit_params import groups
from llmctl.daemon.memory.needs import ESTIMATE, HOST, MIB, Needs, Part

N_UBATCH = 512  # llama.cpp's default micro-batch
# bytes per element of the KV cache types llama-server accepts (blocks of 32 for the quants)
CACHE_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
                    "q4_1": 20 / 32, "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}


def estimate(argv: list[str], files: list[Path]) -> Needs:
    """The figures for llama-server's argv and the model's files (first shard first).
    Raises GGUFError or OSError when the header cannot be read."""
    layouts = [read_layout(f) for f in files]
    weights = sum(f.stat().st_size - layout["data_offset"]
                  for f, layout in zip(files, layouts, strict=True))
    numbers, arrays = layouts[0]["numbers"], layouts[0]["arrays"]
    arch = numbers.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError("the header names no general.architecture")

    def number(key: str, default: int = 0) -> int:
        value = numbers.get(f"{arch}.{key}", default)
        return int(value) if isinstance(value, int | float) else default

    args = {g[0]: g[1:] for g in groups(argv[1:])}
    ctx = _int(args.get("-c") or args.get("--ctx-size")) or number("context_length")
    notes: list[str] = []
    n_layer, n_embd = number("block_count"), number("embedding_length")
    n_head = number("attention.head_count", 1) or 1
    n_head_kv = number("attention.head_count_kv", n_head) or n_head
    key_width = number("attention.key_length", n_embd // n_head) * n_head_kv
    value_width = number("attention.value_length", n_embd // n_head) * n_head_kv
    type_k = _first(args.get("-ctk") or args.get("--cache-type-k")) or "f16"
    type_v = _first(args.get("-ctv") or args.get("--cache-type-v")) or "f16"
    per_token = n_layer * (key_width * CACHE_TYPE_BYTES.get(type_k, 2.0)
                           + value_width * CACHE_TYPE_BYTES.get(type_v, 2.0))
    if any(key.startswith(f"{arch}.ssm.") for key in numbers):
        per_token = 0
        notes.append("recurrent state not estimated")
    elif number("attention.sliding_window"):
        notes.append("sliding-window layers counted at the full context")
    vocab = arrays.get("tokenizer.ggml.tokens", 0)
    compute = N_UBATCH * (4 * vocab + 2 * ctx + 24 * n_embd)
    part = Part(weights // MIB, int(per_token * ctx) // MIB, compute // MIB)
    return Needs(ESTIMATE, {HOST: part}, ctx or None, notes=tuple(notes))


def _first(values: list[str] | None) -> str | None:
    return values[0].lower() if values else None


def _int(values: list[str] | None) -> int:
    try:
        return int(values[0]) if values else 0
    except ValueError:
        return 0
