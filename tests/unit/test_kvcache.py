"""daemon/kvcache: the keep-or-not policy (sliding windows, projectors, the --swa-full memory
budget) and the store (atomic commit, private files, temporaries, stale fingerprints, LRU
within the disk budget, restores that reused nothing)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from llmctl.core.config import DEFAULTS, deep_merge
from llmctl.daemon.kvcache import policy
from llmctl.daemon.kvcache.identity import kv_fingerprint
from llmctl.daemon.kvcache.store import MIB, KvStore, slot_file, temp_file

from ggufkit import write_header

GEMMA_LIKE = {"gemma3.embedding_length": 640, "gemma3.block_count": 18,
              "gemma3.attention.head_count": 4, "gemma3.attention.head_count_kv": 1,
              "gemma3.attention.key_length": 256, "gemma3.attention.value_length": 256,
              "gemma3.attention.sliding_window": 512}


def cfg(**over: Any) -> dict[str, Any]:
    merged = deep_merge(DEFAULTS, over)
    merged.setdefault("id", "m")
    return merged


def gemma(tmp_path: Path, **numbers: int) -> Path:
    return write_header(tmp_path / "g.gguf", arch="gemma3", ctx=32768,
                        numbers={**GEMMA_LIKE, **numbers})


def test_a_dense_model_is_kept(tmp_path: Path) -> None:
    model = write_header(tmp_path / "d.gguf", numbers={
        "llama.embedding_length": 64, "llama.block_count": 2, "llama.attention.head_count": 2})
    decision = policy.decide(cfg(llama={"ctx_size": 2048}), model)
    assert decision.keep and not decision.swa_full
    assert decision.reason == "saved when it stops, restored when it loads"
    # q8_0 K and V: 2 layers x 2 x 64 elements x 34/32 bytes
    assert decision.bytes_per_token == pytest.approx(2 * 2 * 64 * 34 / 32)


def test_a_sliding_window_model_runs_with_swa_full_when_it_fits(tmp_path: Path) -> None:
    decision = policy.decide(cfg(llama={"ctx_size": 4096}), gemma(tmp_path))
    assert decision.keep and decision.swa_full
    # every layer taken as sliding: (4096 - (512 + 512)) cells x 18 layers x 2 x 272 bytes
    extra = (4096 - 1024) * 18 * 2 * 256 * 34 / 32
    assert f"{extra / MIB:.0f} MiB more KV memory" in decision.reason
    assert "sliding-window attention (window 512)" in decision.reason


def test_a_sliding_window_model_over_the_budget_is_not_claimed_as_kept(tmp_path: Path) -> None:
    decision = policy.decide(cfg(llama={"ctx_size": 32768}, cache={"swa_full_max": 100}),
                             gemma(tmp_path))
    assert not decision.keep and not decision.swa_full
    assert "over cache.swa_full_max 100 MiB" in decision.reason
    assert "llama.swa_full: true" in decision.reason  # what to do about it


def test_swa_full_false_keeps_nothing_and_says_why(tmp_path: Path) -> None:
    decision = policy.decide(cfg(llama={"ctx_size": 4096, "swa_full": False}), gemma(tmp_path))
    assert not decision.keep
    assert decision.reason.startswith("sliding-window attention (window 512) without "
                                      "--swa-full (llama.swa_full: false)")
    forced = policy.decide(cfg(llama={"ctx_size": 32768, "swa_full": True},
                               cache={"swa_full_max": 1}), gemma(tmp_path))
    assert forced.keep and forced.swa_full


@pytest.mark.parametrize("over, reason", [
    ({"cache": {"persist": "off"}}, "cache.persist is off"),
    ({"mmproj_file": "/x/mmproj.gguf"}, "multimodal projector"),
    ({"llama": {"embeddings": True}}, "embedding or reranking model"),
])
def test_what_is_never_kept(tmp_path: Path, over: dict[str, Any], reason: str) -> None:
    decision = policy.decide(cfg(**over), write_header(tmp_path / "d.gguf"))
    assert not decision.keep and reason in decision.reason


def test_the_fingerprint_ignores_where_it_listens_but_not_the_context(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "llama-server"
    binary.parent.mkdir()
    binary.write_text("x")
    model = write_header(tmp_path / "d.gguf")
    base = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", "1", "-c", "2048",
            "--slot-save-path", "/a"]
    moved = [*base[:6], "2", "-c", "2048", "--slot-save-path", "/b"]
    bigger = [*base[:7], "4096", *base[9:]]
    fp = kv_fingerprint(base, cfg(), model)
    assert kv_fingerprint(moved, cfg(), model) == fp
    assert kv_fingerprint(bigger, cfg(), model) != fp
    (binary.parent / "libllama.so").write_text("new build")  # a library beside the binary
    assert kv_fingerprint(base, cfg(), model) != fp


# --- the store ------------------------------------------------------------------------------


def fake_save(store: KvStore, model: str, fp: str, size: int, slot: int = 0) -> None:
    """What llama-server leaves for one slot's save: the temporary file."""
    directory = store.model_dir(model, create=True)
    (directory / temp_file(fp, slot)).write_bytes(b"k" * size)


def commit(store: KvStore, model: str, fp: str, size: int, tokens: int = 100) -> None:
    fake_save(store, model, fp, size)
    store.commit(model, fp, [{"slot": 0, "tokens": tokens, "bytes": size}])


def test_a_commit_renames_into_place_privately(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    commit(store, "m", "aaaa", 1000)
    directory = tmp_path / "kv" / "m"
    assert sorted(p.name for p in directory.iterdir()) == ["aaaa-slot0.bin", "aaaa.json"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in directory.iterdir())
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "kv").stat().st_mode & 0o777 == 0o700
    [saved] = store.entries()
    assert (saved.model, saved.tokens, saved.bytes) == ("m", 100, 1000)


def test_a_cut_save_leaves_nothing(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    fake_save(store, "m", "aaaa", 500)
    assert store.entries() == []  # a temporary file is no save
    store.discard_temps("m")
    assert list((tmp_path / "kv" / "m").iterdir()) == []


def test_stale_fingerprints_are_dropped(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    commit(store, "m", "old0", 100)
    commit(store, "m", "new0", 100)
    commit(store, "other", "old0", 100)
    assert store.drop_stale("m", "new0") == ["old0"]
    assert [(s.model, s.fingerprint) for s in store.entries()] == [("m", "new0"),
                                                                  ("other", "old0")]


def test_lru_eviction_within_the_budget(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    for i, model in enumerate(("a", "b", "c")):
        commit(store, model, "ffff", 400)
        saved = store.find(model, "ffff")
        assert saved is not None
        saved.used_at = time.time() - 100 + i  # a oldest, c newest
        store.touch(saved)
        os.utime(tmp_path / "kv" / model / slot_file("ffff", 0))
    a = store.find("a", "ffff")
    assert a is not None
    store.touch(a)  # a was just restored: b is now the least recently used
    assert store.make_room(400, 1200, ("d", "ffff"))
    assert sorted(s.model for s in store.entries()) == ["a", "c"]
    assert not store.make_room(1201, 1200, ("d", "ffff"))  # alone over the budget


def test_the_budget_is_capped_by_free_space(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    assert store.budget(1) == MIB
    assert store.budget(10**12) < 10**12 * MIB  # no disk here has an exbibyte free


def test_restores_that_reuse_nothing_stop_the_saving(tmp_path: Path) -> None:
    store = KvStore(tmp_path / "kv")
    commit(store, "m", "ffff", 100)
    assert store.note_reuse("m", "ffff", 0, 64) is None
    assert store.note_reuse("m", "ffff", 90, 64) is None  # a reuse resets the count
    assert store.note_reuse("m", "ffff", 21, 64) is None  # a template's prefix is nothing
    reason = store.note_reuse("m", "ffff", 0, 64)
    assert reason is not None and "last 2 restores reused nothing" in reason
    assert store.entries() == []
    assert store.off_reason("m", "ffff") == reason == store.any_off_reason("m")
    store.clear("m")
    assert store.off_reason("m", "ffff") is None


# --- the configuration ------------------------------------------------------------------------


def test_cache_keys_are_checked_and_located(tmp_path: Path) -> None:
    from llmctl.core.config import ConfigError, load_global, load_model_file

    bad = tmp_path / "default.yaml"
    bad.write_text("cache:\n  persist: sometimes\n")
    with pytest.raises(ConfigError, match=r"default.yaml:2: cache.persist: expected one of "
                                          r"auto, off"):
        load_global(bad)
    bad.write_text("cache:\n  save_timeout: 2m\n")
    with pytest.raises(ConfigError, match="cache.save_timeout: must be at most 30s"):
        load_global(bad)
    bad.write_text("llama:\n  swa_full: maybe\n")
    with pytest.raises(ConfigError, match="llama.swa_full: expected true or false"):
        load_global(bad)
    model = tmp_path / "config.yaml"
    model.write_text("id: m\nmodel_file: m.gguf\ncache:\n  max_disk: 5\n")
    with pytest.raises(ConfigError, match="cache.max_disk: unknown key"):  # global only
        load_model_file(model)
    model.write_text("id: m\nmodel_file: m.gguf\ncache:\n  persist: 'off'\n")
    load_model_file(model)
