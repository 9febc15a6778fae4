"""The one error body llmctld answers with, on the control API and under /v1 alike:
{"error": {"code", "message", "type", ...}}, the shape OpenAI clients parse."""

from __future__ import annotations

import http.client
import json
from typing import Any

ERROR_TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
               405: "invalid_request_error", 409: "conflict_error", 413: "invalid_request_error",
               422: "invalid_request_error", 502: "upstream_error", 503: "unavailable_error",
               504: "timeout_error"}


class Unavailable(Exception):
    """No backend can serve this proxied request; `status`, `message`, `type_` (the OpenAI
    error type) and `retry_after` (seconds, for a Retry-After header) go to the client."""

    def __init__(self, status: int, code: str, message: str,
                 type_: str = "unavailable_error", retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.type, self.retry_after = type_, retry_after


def error_body(status: int, code: str | int, message: str, type_: str | None = None,
               **extra: Any) -> bytes:
    return json.dumps({"error": {"code": code, "message": message,
                                 "type": type_ or ERROR_TYPES.get(status, "error"),
                                 **extra}}).encode()


def wsgi_error(status: int, code: str | int, message: str, type_: str | None = None,
               **extra: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status line, headers, body) for a raw WSGI answer."""
    body = error_body(status, code, message, type_, **extra)
    return (f"{status} {http.client.responses.get(status, 'Error')}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body)
