"""llama_server.build_argv for the files beside a model: the projector (`--mmproj`) and the
draft model for speculative decoding, mapped onto the flags the installed build has."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.core.config import load_global, merge_model
from llmctl.daemon.backend.llama_server import BackendSetupError, build_argv, parse_help

SUPPORT = Path(__file__).resolve().parents[1] / "support"
NEW_HELP = (SUPPORT / "llama_server_help_b11434.txt").read_text()
MINIMAL_HELP = """\
-m,    --model FNAME                    model path
--host HOST                             ip address to listen (default: 127.0.0.1)
--port PORT                             port to listen (default: 8080)
"""
SHORT_ONLY_HELP = MINIMAL_HELP + """\
-mm FILE                                multimodal projector
-md FNAME                               draft model
"""


def config(tmp_path: Path, **files: str) -> dict:
    cfg = merge_model(load_global(tmp_path / "absent.yaml"),
                      {"id": "m", "model_file": "model.gguf"})
    cfg.update(files)
    return cfg


def argv(help_text: str, cfg: dict) -> list[str]:
    return build_argv(Path("/bin/llama-server"), parse_help(help_text), cfg, Path("/m.gguf"))


def test_projector_and_draft_on_a_current_build(tmp_path: Path) -> None:
    out = argv(NEW_HELP, config(tmp_path, mmproj_file="/m/mmproj-f16.gguf",
                                draft_model_file="/m/draft.gguf"))
    assert out[out.index("--mmproj") + 1] == "/m/mmproj-f16.gguf"
    assert out[out.index("--model-draft") + 1] == "/m/draft.gguf"


def test_short_spellings_when_that_is_all_a_build_has(tmp_path: Path) -> None:
    out = argv(SHORT_ONLY_HELP, config(tmp_path, mmproj_file="/p.gguf", draft_model_file="/d"))
    assert out[out.index("-mm") + 1] == "/p.gguf"
    assert out[out.index("-md") + 1] == "/d"


def test_no_files_no_flags(tmp_path: Path) -> None:
    out = argv(NEW_HELP, config(tmp_path))
    assert "--mmproj" not in out and "--model-draft" not in out


def test_a_build_without_the_flag_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendSetupError) as info:
        argv(MINIMAL_HELP, config(tmp_path, mmproj_file="/p.gguf"))
    assert str(info.value) == (
        "this llama-server has no --mmproj flag for the multimodal projector (/p.gguf); use a "
        "newer llama.cpp, or remove mmproj_file from the model's config")
