"""relay/model_scan.py: the top-level `model` of a JSON body without parsing it, checked
against json.loads wherever json.loads can read the body."""

from __future__ import annotations

import json
import mmap
import tempfile

import pytest

from llmctl.daemon.relay.model_scan import top_level_model


def _parsed(body: bytes) -> str | None:
    value = json.loads(body)
    model = value.get("model") if isinstance(value, dict) else None
    return model if isinstance(model, str) else None


CASES = [
    (b'{"model": "qwen"}', "qwen"),
    (b' \r\n\t{ "model" :\n"qwen" } ', "qwen"),
    (b'{"messages": [{"role": "user", "model": "inner"}], "model": "outer"}', "outer"),
    (b'{"meta": {"model": "nested"}}', None),
    (b'{"a": "x\\"model\\": \\"fake\\"", "b": 1}', None),  # "model" inside an escaped string
    (b'{"a": "ends with a backslash \\\\", "model": "m"}', "m"),
    (b'{"a": "{[not structure]}", "b": [1, {"c": "]"}], "model": "m"}', "m"),
    (b'{"model": "a\\u00e9\\"b"}', 'a\u00e9"b'),
    (b'{"\\u006dodel": "escaped-key"}', "escaped-key"),
    (b'{"model": "first", "x": null, "model": "last"}', "last"),
    (b'{"model": 7}', None),
    (b'{"model": "m", "t": true, "f": false, "n": -1.5e3, "z": null}', "m"),
    (b'{"model": "m", "big": [' + (b'{"k": [1, 2, "' + b"A" * 50_000 + b'"]},') * 20 + b'0]}', "m"),
    (b'{}', None),
    (b'[{"model": "m"}]', None),
]


@pytest.mark.parametrize(("body", "model"), CASES)
def test_matches_json_loads(body: bytes, model: str | None) -> None:
    assert _parsed(body) == model  # the case itself is right
    assert top_level_model(body) == model


@pytest.mark.parametrize("body", [
    b"", b"   ", b"not json", b'{"model": "m"', b'{"model": "m",', b'{"model" "m"}',
    b'{"a": [1, 2}', b'{"model": "unterminated}', b'{"a": 1 "model": "m"}',
])
def test_broken_bodies_name_no_model(body: bytes) -> None:
    assert top_level_model(body) is None


def test_model_after_a_huge_value_in_a_mapped_file() -> None:
    body = (b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": '
            b'{"url": "data:image/png;base64,' + b"QUJD" * (3 * 1024 * 1024) + b'"}}]}], '
            b'"model": "vision"}')
    with tempfile.TemporaryFile() as f:
        f.write(body)
        f.flush()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            assert top_level_model(view) == "vision"
