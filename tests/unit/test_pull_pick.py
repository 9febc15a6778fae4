"""llmctl.core.pull: the repository spec and the quantisation picker (no network)."""

from __future__ import annotations

import pytest

from llmctl.core.pull import PullError, RemoteFile, labels, parse_spec, pick

QWEN = [RemoteFile(p) for p in (
    "README.md", ".gitattributes",
    "Qwen3-8B-Q4_K_M.gguf", "Qwen3-8B-Q4_K_S.gguf", "Qwen3-8B-Q8_0.gguf",
    "Qwen3-8B-UD-Q4_K_XL.gguf", "Qwen3-8B-IQ4_XS.gguf", "Qwen3-8B-BF16.gguf",
)]


def test_parse_spec() -> None:
    assert parse_spec("unsloth/Qwen3-8B-GGUF:Q4_K_M") == ("unsloth/Qwen3-8B-GGUF", "Q4_K_M")
    assert parse_spec("unsloth/Qwen3-8B-GGUF") == ("unsloth/Qwen3-8B-GGUF", None)
    assert parse_spec("org/repo:sub/file.gguf") == ("org/repo", "sub/file.gguf")
    for bad in ("qwen3", "a/b/c", "/x", "org/ name", ""):
        with pytest.raises(PullError) as info:
            parse_spec(bad)
        assert info.value.code == "bad_spec"
        assert "org/name" in info.value.message


def test_a_quantisation_picks_its_file() -> None:
    plan = pick("unsloth/Qwen3-8B-GGUF", QWEN, "Q4_K_M")
    assert [f.path for f in plan.files] == ["Qwen3-8B-Q4_K_M.gguf"]
    assert plan.label == "Q4_K_M" and plan.projector is None
    assert [f.path for f in pick("r/x", QWEN, "q8_0").files] == ["Qwen3-8B-Q8_0.gguf"]
    # whole tokens only: Q4_K is neither Q4_K_M nor Q4_K_S nor UD-Q4_K_XL
    with pytest.raises(PullError) as info:
        pick("r/x", QWEN, "Q4_K")
    assert info.value.code == "not_found"
    assert [f.path for f in pick("r/x", QWEN, "UD-Q4_K_XL").files] == [
        "Qwen3-8B-UD-Q4_K_XL.gguf"]


def test_default_is_q4_k_m_else_the_only_one() -> None:
    assert pick("r/x", QWEN, None).label == "Q4_K_M"
    only = [RemoteFile("Tiny-F32.gguf"), RemoteFile("README.md")]
    assert [f.path for f in pick("r/tiny", only, None).files] == ["Tiny-F32.gguf"]
    with pytest.raises(PullError) as info:
        pick("r/x", [RemoteFile("A-Q8_0.gguf"), RemoteFile("A-F16.gguf")], None)
    assert info.value.code == "ambiguous"
    assert info.value.message == ("r/x has several quantisations; name one: r/x:F16, "
                                  "r/x:Q8_0")
    assert info.value.choices == ["F16", "Q8_0"]


def test_a_missing_quantisation_lists_what_the_repo_has() -> None:
    with pytest.raises(PullError) as info:
        pick("unsloth/Qwen3-8B-GGUF", QWEN, "Q5_K_M")
    assert info.value.code == "not_found"
    assert info.value.choices == ["BF16", "IQ4_XS", "Q4_K_M", "Q4_K_S", "Q8_0", "UD-Q4_K_XL"]
    assert info.value.message == (
        "unsloth/Qwen3-8B-GGUF has no Q5_K_M quantisation; it has: BF16, IQ4_XS, Q4_K_M, "
        "Q4_K_S, Q8_0, UD-Q4_K_XL (pull unsloth/Qwen3-8B-GGUF:<one of them>)")


def test_shards_in_a_folder_and_the_projector() -> None:
    files = [RemoteFile(p, size=10) for p in (
        "Q4_K_M/Big-Q4_K_M-00002-of-00002.gguf", "Q4_K_M/Big-Q4_K_M-00001-of-00002.gguf",
        "Q8_0/Big-Q8_0-00001-of-00002.gguf", "Q8_0/Big-Q8_0-00002-of-00002.gguf",
        "mmproj-BF16.gguf", "mmproj-F16.gguf", "mmproj-F32.gguf")]
    plan = pick("org/Big-GGUF", files, "Q4_K_M")
    assert [f.path for f in plan.files] == ["Q4_K_M/Big-Q4_K_M-00001-of-00002.gguf",
                                            "Q4_K_M/Big-Q4_K_M-00002-of-00002.gguf"]
    assert plan.projector is not None and plan.projector.path == "mmproj-F16.gguf"
    assert plan.total_bytes == 30
    assert sorted(labels(files).values()) == ["Q4_K_M", "Q8_0"]
    assert plan.label == "Q4_K_M"


def test_a_file_name_picks_that_file() -> None:
    plan = pick("r/x", QWEN, "Qwen3-8B-IQ4_XS.gguf")
    assert [f.path for f in plan.files] == ["Qwen3-8B-IQ4_XS.gguf"]
    with pytest.raises(PullError) as info:
        pick("r/x", QWEN, "nope.gguf")
    assert info.value.code == "not_found" and "has no model file nope.gguf" in info.value.message


def test_incomplete_split_and_non_gguf_repos() -> None:
    with pytest.raises(PullError) as info:
        pick("r/x", [RemoteFile("Big-00001-of-00003.gguf"),
                     RemoteFile("Big-00003-of-00003.gguf")], None)
    assert info.value.code == "incomplete"
    with pytest.raises(PullError) as info:
        pick("r/x", [RemoteFile("model.safetensors"), RemoteFile("mmproj-F16.gguf")], None)
    assert info.value.code == "not_found" and "no .gguf model files" in info.value.message
