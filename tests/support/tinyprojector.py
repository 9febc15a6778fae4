"""A tiny random-weight multimodal projector (mmproj) GGUF that a REAL llama-server loads with
`--mmproj` and uses for images: a LLaVA-style `mlp` projector (a CLIP ViT, then two linear
layers with a GELU between them). Needs PyPI ``gguf`` and ``numpy``.

    write_tiny_projector(path, text_n_embd=64)   ~170 KB; 28x28 images, 4 patches of 14x14

What llama.cpp's tools/mtmd/clip.cpp (build 11434) requires of it, and why each part is here:
- `clip.has_vision_encoder` true and `clip.projector_type` "mlp" (the llava projector: the
  simplest graph, no merging or special tokens);
- `clip.vision.{image_size, patch_size, embedding_length, feed_forward_length,
  projection_dim, block_count, attention.head_count, attention.layer_norm_epsilon}`,
  `clip.vision.image_mean` / `image_std` (three floats each); `clip.use_gelu` picks the FFN's
  activation;
- tensors: `v.patch_embd` (a patch x patch convolution over 3 channels), `v.position_embd` (one
  row per patch: no class embedding), per block `v.blk.N.{attn_q,attn_k,attn_v,attn_out,
  ffn_up,ffn_down}` with biases and `ln1`/`ln2`, then `mm.0` and `mm.2` (weight and bias);
- `mm.2`'s output size must equal the text model's n_embd, or mtmd refuses the pair
  ("mismatch between text model (n_embd = ...) and mmproj").
The llava graph runs all blocks but the last (it takes the second-to-last layer's features),
so two blocks exercise one.

Measured with write_tiny_llama()'s model: llama-server logs `loaded multimodal model`, its
`/props` says `modalities.vision: true`, and an OpenAI chat request with a 28x28 PNG
`image_url` is answered (random text) in ~0.1 s.
"""

from __future__ import annotations

import pathlib
import struct
import zlib

from tinymodel import gguf_file

__all__ = ["write_tiny_projector", "tiny_png"]


def write_tiny_projector(path, *, text_n_embd: int = 64, n_embd: int = 32, n_head: int = 2,
                         n_ff: int = 64, n_layer: int = 2, image_size: int = 28,
                         patch_size: int = 14, hidden: int = 64, name: str = "tiny projector",
                         seed: int = 0) -> pathlib.Path:
    """Write the projector to `path` (atomically) and return it as a Path; `text_n_embd` is
    the n_embd of the text model it goes with."""
    import numpy as np

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    rng = np.random.default_rng(seed)

    def rand(*shape: int):
        # numpy shape is ggml's ne reversed: (rows=out, cols=in)
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gguf_file(path, "clip") as w:
        w.add_name(name)
        w.add_bool("clip.has_vision_encoder", True)
        w.add_string("clip.projector_type", "mlp")
        w.add_bool("clip.use_gelu", True)
        v = "clip.vision."
        w.add_uint32(v + "image_size", image_size)
        w.add_uint32(v + "patch_size", patch_size)
        w.add_uint32(v + "embedding_length", n_embd)
        w.add_uint32(v + "feed_forward_length", n_ff)
        w.add_uint32(v + "projection_dim", text_n_embd)
        w.add_uint32(v + "block_count", n_layer)
        w.add_uint32(v + "attention.head_count", n_head)
        w.add_float32(v + "attention.layer_norm_epsilon", 1e-6)
        w.add_array(v + "image_mean", [0.5, 0.5, 0.5])
        w.add_array(v + "image_std", [0.5, 0.5, 0.5])

        n_patches = (image_size // patch_size) ** 2
        w.add_tensor("v.patch_embd.weight", rand(n_embd, 3, patch_size, patch_size))
        w.add_tensor("v.patch_embd.bias", rand(n_embd))
        w.add_tensor("v.position_embd.weight", rand(n_patches, n_embd))
        for i in range(n_layer):
            p = f"v.blk.{i}."
            for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
                w.add_tensor(p + t + ".weight", rand(n_embd, n_embd))
                w.add_tensor(p + t + ".bias", rand(n_embd))
            for t in ("ln1", "ln2"):
                w.add_tensor(p + t + ".weight", np.ones(n_embd, dtype=np.float32))
                w.add_tensor(p + t + ".bias", np.zeros(n_embd, dtype=np.float32))
            w.add_tensor(p + "ffn_up.weight", rand(n_ff, n_embd))
            w.add_tensor(p + "ffn_up.bias", rand(n_ff))
            w.add_tensor(p + "ffn_down.weight", rand(n_embd, n_ff))
            w.add_tensor(p + "ffn_down.bias", rand(n_embd))
        w.add_tensor("mm.0.weight", rand(hidden, n_embd))
        w.add_tensor("mm.0.bias", rand(hidden))
        w.add_tensor("mm.2.weight", rand(text_n_embd, hidden))
        w.add_tensor("mm.2.bias", rand(text_n_embd))

    return path


def tiny_png(width: int = 28, height: int = 28) -> bytes:
    """A small RGB PNG (a colour gradient), for an `image_url` data URL."""
    rows = b"".join(b"\0" + b"".join(bytes([(x * 9) % 256, (y * 9) % 256, 128])
                                     for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
