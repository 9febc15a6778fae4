"""What one llama-server launch needs in memory: one `Part` per place the memory goes (`Host`,
and each device as llama.cpp names it: CUDA0, ROCm0, ...), each split into weights, context
(the KV cache) and compute buffers, in MiB. Plain data, with its JSON form for the cache file
and the API.

`source` says where the figures come from: "llama-fit-params" (llama.cpp's own accounting for
these flags) or "estimate" (gguf_estimate.py: arithmetic on the GGUF header, a fallback).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HOST = "Host"  # llama-fit-params' name for system memory
FIT_PARAMS = "llama-fit-params"
ESTIMATE = "estimate"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Part:
    weights: int
    context: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.context + self.compute

    def to_dict(self) -> dict[str, int]:
        return {"weights_mib": self.weights, "context_mib": self.context,
                "compute_mib": self.compute, "total_mib": self.total}


@dataclass(frozen=True)
class Needs:
    source: str
    parts: dict[str, Part]
    ctx_size: int | None  # the context the figures are for (-c, or the trained one for -c 0)
    # files the estimator does not load (a projector, a draft model), counted on the host at
    # their size: llama-fit-params refuses --mmproj and --model-draft
    extra_mib: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def host(self) -> int:
        part = self.parts.get(HOST)
        return (part.total if part else 0) + self.extra_mib

    @property
    def devices(self) -> dict[str, int]:
        return {name: part.total for name, part in self.parts.items() if name != HOST}

    def sum(self, what: str) -> int:
        return sum(getattr(part, what) for part in self.parts.values())

    @property
    def context_per_token(self) -> float:
        """MiB of KV per token of context (every place together), for resizing -c."""
        return self.sum("context") / self.ctx_size if self.ctx_size else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "ctx_size": self.ctx_size, "extra_mib": self.extra_mib,
                "parts": {name: part.to_dict() for name, part in self.parts.items()},
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Needs:
        parts = {str(name): Part(int(p["weights_mib"]), int(p["context_mib"]),
                                 int(p["compute_mib"]))
                 for name, p in data["parts"].items()}
        ctx = data.get("ctx_size")
        return cls(str(data["source"]), parts, int(ctx) if ctx is not None else None,
                   int(data.get("extra_mib") or 0), tuple(data.get("notes") or ()))
