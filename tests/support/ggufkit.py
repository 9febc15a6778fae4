"""GGUF files for discovery tests: header-only files written byte by byte (no weights; llmctl
reads only headers when it scans), and real split models for llama-server.

    write_header(path, name=..., arch=..., ctx=..., file_type=..., split=(no, count))
    split_model(model, out_dir, count)  -> shard paths, in llama.cpp's gguf-split format
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

_U32, _STRING, _U16, _I32 = 4, 8, 2, 5


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, vtype: int, value: Any) -> bytes:
    out = _string(key) + struct.pack("<I", vtype)
    if vtype == _STRING:
        return out + _string(value)
    return out + struct.pack({_U32: "<I", _U16: "<H", _I32: "<i"}[vtype], value)


def write_header(path: Path, *, name: str | None = "Test Model", arch: str = "llama",
                 ctx: int | None = 4096, file_type: int | None = 15,
                 split: tuple[int, int] | None = None, pad: int = 0,
                 numbers: dict[str, int] | None = None) -> Path:
    """A GGUF v3 header with no tensors: enough for llmctl's scan (file_type 15 = Q4_K_M).
    `pad` appends that many bytes (a file's size matters to the header cache); `numbers`
    adds uint32 keys (e.g. `llama.attention.sliding_window`)."""
    kvs = [_kv("general.architecture", _STRING, arch)]
    if name is not None:
        kvs.append(_kv("general.name", _STRING, name))
    if file_type is not None:
        kvs.append(_kv("general.file_type", _U32, file_type))
    if ctx is not None:
        kvs.append(_kv(f"{arch}.context_length", _U32, ctx))
    kvs += [_kv(key, _U32, value) for key, value in (numbers or {}).items()]
    if split is not None:
        kvs += [_kv("split.no", _U16, split[0] - 1), _kv("split.count", _U16, split[1]),
                _kv("split.tensors.count", _I32, 0)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
                     + b"\0" * pad)
    return path


def split_model(model: Path, out_dir: Path, count: int, prefix: str) -> list[Path]:
    """Split a real GGUF into `count` shards the way llama.cpp's gguf-split does: every shard
    carries `split.no`, `split.count` and `split.tensors.count`; the first also carries all of
    the model's metadata; the tensors are dealt out in order."""
    import gguf

    reader = gguf.GGUFReader(str(model))
    tensors = list(reader.tensors)
    per = -(-len(tensors) // count)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    arch = str(reader.fields["general.architecture"].contents())
    for i in range(count):
        path = out_dir / f"{prefix}-{i + 1:05d}-of-{count:05d}.gguf"
        writer = gguf.GGUFWriter(str(path), arch)
        # the writer adds general.architecture itself; copy everything else to shard 1
        if i == 0:
            for key, field in reader.fields.items():
                if key.startswith("GGUF.") or key == "general.architecture":
                    continue
                vtype = field.types[0]
                sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)
        writer.add_uint16("split.no", i)
        writer.add_uint16("split.count", count)
        writer.add_int32("split.tensors.count", len(tensors))
        for tensor in tensors[i * per:(i + 1) * per]:
            writer.add_tensor(tensor.name, tensor.data, raw_shape=list(reversed(
                [int(d) for d in tensor.shape])), raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        paths.append(path)
    return paths
