"""llmctl.core.gguf: facts from a GGUF header; anything else raises GGUFError."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from llmctl.core.gguf import GGUFError, read_facts

from tinymodel import write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", name="unit-tiny",
                            ctx=1024, n_layer=3)


def tensor_table_end(path: Path) -> int:
    """Offset just past the last tensor-info record (the end of the header proper)."""
    reader = gguf.GGUFReader(path)
    field = reader.tensors[-1].field
    return field.offset + sum(part.nbytes for part in field.parts)


def test_facts_of_a_tiny_model(tiny: Path) -> None:
    facts = read_facts(tiny)
    assert facts["architecture"] == "llama"
    assert facts["name"] == "unit-tiny"
    assert facts["quantization"] == "F32"
    assert facts["context_length"] == 1024
    assert facts["block_count"] == 3
    assert facts["gguf_version"] >= 2
    assert facts["tensors"] == len(gguf.GGUFReader(tiny).tensors)
    assert facts["size_bytes"] == tiny.stat().st_size


def test_parameter_count_matches_the_tensors(tiny: Path) -> None:
    expected = sum(int(t.n_elements) for t in gguf.GGUFReader(tiny).tensors)
    assert read_facts(tiny)["parameters"] == expected > 0


def test_accepts_str_paths(tiny: Path) -> None:
    assert read_facts(str(tiny))["name"] == "unit-tiny"


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a gguf file at all, just text\n" * 4,
                                     b"\x00" * 64])
def test_non_gguf_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError):
        read_facts(path)


def test_non_gguf_file_says_why(tmp_path: Path) -> None:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_facts(path)


@pytest.mark.parametrize("keep", [24, 40, 100, 1000, 3000])
def test_truncated_metadata(tmp_path: Path, tiny: Path, keep: int) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny.read_bytes()[:keep])
    with pytest.raises(GGUFError, match="truncated"):
        read_facts(path)


@pytest.mark.parametrize("short_by", [1, 6, 12, 20])
def test_truncated_tensor_table(tmp_path: Path, tiny: Path, short_by: int) -> None:
    """A file cut inside its last tensor-info record (its type or offset field) is not a
    complete GGUF header either."""
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny.read_bytes()[:tensor_table_end(tiny) - short_by])
    with pytest.raises(GGUFError, match="truncated"):
        read_facts(path)


def test_old_gguf_version_refused(tmp_path: Path, tiny: Path) -> None:
    data = bytearray(tiny.read_bytes())
    data[4:8] = (1).to_bytes(4, "little")
    path = tmp_path / "v1.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="version 1"):
        read_facts(path)


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_facts(tmp_path / "absent.gguf")
