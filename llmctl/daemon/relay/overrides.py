"""Per-model request overrides (`request: {defaults, force, strip}` in a model's config.yaml),
applied to the JSON body of a proxied /v1 request before it reaches llama-server.

Order: `strip` removes fields, `defaults` fills in fields the client left out (or sent as
null), `force` sets fields whatever the client said. Only top-level fields of a JSON object
body are touched; a body that is not JSON (multipart audio, say), is not an object, or is
larger than PARSE_LIMIT is forwarded untouched. Responses are never looked at, so streams stay unbuffered.

This module owns the body decisions (is it JSON? which model does it name?) and the
rewrite; the proxy decides when to call it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Bodies up to this size are parsed when a decision needs them; larger ones pass untouched
# (parsing tens of MiB would stall every other request of the gevent worker meanwhile).
PARSE_LIMIT = 8 * 1024 * 1024
_JSON_TYPES = ("application/json", "text/json", "application/x-www-form-urlencoded", "text/plain")


def json_object(body: bytes | None, content_type: str | None) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one. A missing content type, and the
    form type `curl -d` sends, count as JSON when the body looks like an object: llama-server
    reads them as JSON too."""
    if not body or len(body) > PARSE_LIMIT or not json_media(content_type):
        return None
    if body.lstrip()[:1] != b"{":
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None  # llama-server answers it with its own error
    return value if isinstance(value, dict) else None


def json_media(content_type: str | None) -> bool:
    """Whether a body of this content type is read as JSON (as llama-server reads it)."""
    media = (content_type or "").split(";")[0].strip().lower()
    return not media or media in _JSON_TYPES or media.endswith("+json")


def requested_model(body: dict[str, Any] | None) -> str | None:
    """The `model` a request names, if it names one as text."""
    name = body.get("model") if body else None
    return name.strip() if isinstance(name, str) and name.strip() else None


@dataclass(frozen=True)
class Overrides:
    defaults: dict[str, Any]
    force: dict[str, Any]
    strip: tuple[str, ...]

    @classmethod
    def of(cls, model_config: dict[str, Any] | None) -> Overrides | None:
        """The overrides of a model's merged config; None when it has none."""
        request = (model_config or {}).get("request") or {}
        made = cls(dict(request.get("defaults") or {}), dict(request.get("force") or {}),
                   tuple(request.get("strip") or ()))
        return made if made.defaults or made.force or made.strip else None

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in body.items() if k not in self.strip}
        for key, value in self.defaults.items():
            if out.get(key) is None:  # some clients send null for "not set"
                out[key] = value
        out.update(self.force)
        return out


def rewrite(body: dict[str, Any], overrides: Overrides) -> bytes:
    return json.dumps(overrides.apply(body), ensure_ascii=False,
                      separators=(",", ":")).encode()
