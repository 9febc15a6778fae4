"""Tiny random-weight llama-architecture GGUF models for tests against a REAL llama-server.

The models have random F32 weights and an SPM byte vocabulary (``<unk>``, ``<s>``, ``</s>``,
``<0x00>`` .. ``<0xFF>``), so llama-server loads them and serves (garbage) completions.
Needs PyPI ``gguf`` and ``numpy``.

    write_tiny_llama(path)   469 KB; load (spawn -> /health 200) 0.03 s idle, <= 0.5 s busy
    write_slow_llama(path)   63 MB; load 1.2-1.4 s idle, up to ~2.6 s on a busy 2-core box
    write_big_llama(path)    44 MB, but 48 KiB of f16 KV per token (96 layers x 128): a
                             1M-token context needs 48 GiB (25.5 GiB at q8_0), 2k 96 MiB

(measured with llama.cpp build 11434, CPU, 2 cores, ``-c 512 -np 1 -fa auto -lm none``
and with llmctl's full flag set).

Why the slow model has a huge vocabulary instead of more/wider layers: F32 weights are read
from the page cache at ~1 GB/s and the warm-up run is cheap, so a 100 MB model of wide layers
still loads in ~0.1 s.  What costs time is building the vocabulary (~3 us per token, done
twice: once for the memory fit, once for the load), so the slow model adds 400k UNUSED
tokens ``<unusedN>`` and ties its output to the token embedding (byte-token rows large,
unused rows zero, so sampling still picks byte tokens).  Its ``/proc/<pid>/io`` rchar
goes ~19% -> ~38% (the metadata, read twice) and then jumps past 100% (~119%) when the
tensors are read at the end: clamp progress at 100%.

Constraint: with llama-server's q8_0 K/V cache (and llmctl's default), the head dimension
(n_embd / n_head) must be a multiple of 32; a quantized V cache also needs ``-fa`` not ``off``.

CLI::

    python tests/support/tinymodel.py OUT.gguf [--n-embd 64] [--layers 2] [--heads 2]
        [--heads-kv N] [--ff 128] [--ctx 2048] [--name tiny] [--seed 0]
        [--extra-vocab N] [--slow]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

__all__ = [
    "write_tiny_llama",
    "write_slow_llama",
    "write_big_llama",
    "BIG_MODEL_PARAMS",
    "SLOW_MODEL_PARAMS",
    "VOCAB_SIZE",
]

# Special tokens + 256 byte tokens.
VOCAB_SIZE = 3 + 256

# Parameters of the "slow" model: see write_slow_llama().
SLOW_MODEL_PARAMS = dict(n_embd=32, n_layer=2, n_head=1, n_ff=64, extra_vocab=400_000)


# Parameters of the "big" model: see write_big_llama().
BIG_MODEL_PARAMS = dict(n_embd=128, n_layer=96, n_head=1, n_ff=128)


# Fill-in-the-middle tokens (``fim=True``): llama-server's /infill refuses a model without them.
FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")


@contextlib.contextmanager
def gguf_file(path: pathlib.Path, arch: str) -> Iterator[Any]:
    """A GGUFWriter for `path`, filled in the with-block, written to a `.part` file and moved
    into place at the block's end: `path` is never half a model."""
    import gguf

    tmp = path.with_name(path.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)


def _vocab(extra: int = 0, fim: bool = False):
    import gguf

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    toktypes = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ] + [gguf.TokenType.BYTE] * 256
    if fim:
        tokens += list(FIM_TOKENS)
        toktypes += [gguf.TokenType.CONTROL] * len(FIM_TOKENS)
    if extra:
        tokens += [f"<unused{i}>" for i in range(extra)]
        toktypes += [gguf.TokenType.UNUSED] * extra
    scores = [0.0] * len(tokens)
    return tokens, scores, toktypes


def write_tiny_llama(
    path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 2,
    n_head_kv: int | None = None,
    n_ff: int = 128,
    ctx: int = 2048,
    name: str = "tiny",
    seed: int = 0,
    extra_vocab: int = 0,
    fim: bool = False,
    chat_template: str | None = None,
) -> pathlib.Path:
    """Write a random-weight llama GGUF (F32) to ``path`` and return it as a Path.

    ``n_embd / n_head`` (the head dimension) must be a multiple of 32 for the q8_0 K/V
    cache llama-server is usually launched with.  ``n_head_kv`` defaults to ``n_head``
    (no GQA) and must divide ``n_head``.  ``extra_vocab`` appends that many UNUSED
    tokens (and ties the output to the token embedding): the load gets slower by ~6 us
    per token; used by write_slow_llama().  ``fim`` adds fill-in-the-middle tokens (for
    /infill); it cannot be combined with ``extra_vocab``.
    per token; used by write_slow_llama().  ``chat_template`` is stored as the
    model's ``tokenizer.chat_template``.
    """
    import gguf
    import numpy as np

    if n_head_kv is None:
        n_head_kv = n_head
    if fim and extra_vocab:
        raise ValueError("fim and extra_vocab cannot be combined")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    if n_head % n_head_kv:
        raise ValueError(f"n_head ({n_head}) must be divisible by n_head_kv ({n_head_kv})")
    head_dim = n_embd // n_head
    if head_dim % 2:
        raise ValueError(f"head dimension {head_dim} must be even (RoPE)")
    n_embd_kv = head_dim * n_head_kv

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # With the big tied embedding of the extra-vocab model the residual stream would be
    # dominated by the input token's embedding (the model would just repeat its input);
    # larger layer weights make the output depend on the context again.
    scale = 0.5 if extra_vocab else 0.02

    def rand(*shape, scale=scale):
        # numpy shape is ggml's ne reversed: (rows=out, cols=in).
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    def ones(n):
        return np.ones((n,), dtype=np.float32)

    tokens, scores, toktypes = _vocab(extra_vocab, fim)
    n_vocab = len(tokens)

    with gguf_file(path, "llama") as w:
        w.add_name(name)
        w.add_file_type(int(gguf.LlamaFileType.ALL_F32))  # 0
        w.add_context_length(ctx)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_rope_dimension_count(head_dim)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(10000.0)

        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(toktypes)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        if fim:
            for key, token in zip(("pre", "suf", "mid"), FIM_TOKENS, strict=True):
                w.add_uint32(f"tokenizer.ggml.fim_{key}_token_id", tokens.index(token))
        if chat_template is not None:
            w.add_chat_template(chat_template)

        if extra_vocab:
            # Tied embeddings (no output.weight).  Rows of the unused tokens are zero (logit
            # 0); byte-token rows are large, so the top-k candidates are always byte tokens
            # and the model still produces (random) text instead of empty pieces.
            embd = np.zeros((n_vocab, n_embd), dtype=np.float32)
            embd[:3] = rand(3, n_embd, scale=0.02)
            embd[3:259] = rng.standard_normal((256, n_embd), dtype=np.float32)
            w.add_tensor("token_embd.weight", embd)
            w.add_tensor("output_norm.weight", ones(n_embd))
        else:
            w.add_tensor("token_embd.weight", rand(n_vocab, n_embd))
            w.add_tensor("output_norm.weight", ones(n_embd))
            w.add_tensor("output.weight", rand(n_vocab, n_embd))
        for i in range(n_layer):
            p = f"blk.{i}."
            w.add_tensor(p + "attn_norm.weight", ones(n_embd))
            w.add_tensor(p + "attn_q.weight", rand(n_embd, n_embd))
            w.add_tensor(p + "attn_k.weight", rand(n_embd_kv, n_embd))
            w.add_tensor(p + "attn_v.weight", rand(n_embd_kv, n_embd))
            w.add_tensor(p + "attn_output.weight", rand(n_embd, n_embd))
            w.add_tensor(p + "ffn_norm.weight", ones(n_embd))
            w.add_tensor(p + "ffn_gate.weight", rand(n_ff, n_embd))
            w.add_tensor(p + "ffn_up.weight", rand(n_ff, n_embd))
            w.add_tensor(p + "ffn_down.weight", rand(n_embd, n_ff))

    return path


def write_slow_llama(path, *, name: str = "slow", seed: int = 0, **overrides) -> pathlib.Path:
    """Write a model whose load is slow enough to watch and to cancel (see module docstring).

    Defaults: ``SLOW_MODEL_PARAMS`` (63 MB, 1.2-2.6 s to load on 2 cores).  Keyword
    overrides are passed on to write_tiny_llama(), e.g. ``extra_vocab=800_000`` doubles
    the load time.
    """
    params = dict(SLOW_MODEL_PARAMS)
    params.update(overrides)
    return write_tiny_llama(path, name=name, seed=seed, **params)


def write_big_llama(path, *, name: str = "big", seed: int = 0) -> pathlib.Path:
    """Write a small file with a big KV cache per token, for memory-fit tests: the KV width
    is n_layer x n_embd_kv = 96 x 128 (as a 12-layer 1024-wide model's), while the weights
    stay 42 MiB because each layer is 128 wide. llama-fit-params on it: `-c 2048` ->
    `Host 42 96 3`, `-c 1048576` -> `Host 42 49152 1025` (f16 K/V; q8_0 26112)."""
    return write_tiny_llama(path, name=name, seed=seed, **BIG_MODEL_PARAMS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write a random-weight llama GGUF for tests.")
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--slow", action="store_true", help="start from the slow-load model's parameters")
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--heads-kv", type=int)
    ap.add_argument("--ff", type=int)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--extra-vocab", type=int, help="extra unused tokens (slows the load down)")
    ap.add_argument("--name")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    params = dict(SLOW_MODEL_PARAMS) if a.slow else dict(n_embd=64, n_layer=2, n_head=2, n_ff=128)
    if a.n_embd is not None:
        params["n_embd"] = a.n_embd
    if a.layers is not None:
        params["n_layer"] = a.layers
    if a.heads is not None:
        params["n_head"] = a.heads
    if a.ff is not None:
        params["n_ff"] = a.ff
    if a.extra_vocab is not None:
        params["extra_vocab"] = a.extra_vocab
    name = a.name or ("slow" if a.slow else "tiny")
    p = write_tiny_llama(
        a.out, n_head_kv=a.heads_kv, ctx=a.ctx, name=name, seed=a.seed, **params
    )
    print(f"{p} {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
