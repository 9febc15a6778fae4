"""A faster `http.client.parse_headers` for the proxy worker, with the same results.

Every request through the proxy has its header block parsed twice by the standard library's
email package: the client's request (gevent's pywsgi calls `http.client.parse_headers`) and
llama-server's answer (http.client's `HTTPResponse.begin`). The email parser is general (MIME,
defects, policies) and was the largest piece of the proxy's own CPU per request after the
socket calls. Ordinary header blocks, one `Name: value` per line, are split here with one
regular expression per line into the same message object (`_class`, with the same name/value
pairs as the email parser's compat32 policy makes: the value without leading blanks or the
line end). Anything else (a folded continuation line, a line that is not a field) goes to the
standard parser, unchanged, so odd input is judged exactly as before.

`install()` puts it in place of `http.client.parse_headers`, which both callers look up there
at call time; the proxy worker calls it once, after monkey-patching.
"""

from __future__ import annotations

import http.client
import io
import re
from typing import Any

# a field name is printable ASCII without the colon (the email parser's own rule), then the
# value after any blanks, then the line end. Not matched: a line starting with a blank (a
# continuation), and a CR inside a line (the email parser breaks lines there too).
_FIELD = re.compile(r"([!-9;-~]+):[ \t]*([^\r\n]*)\r?\n?")
_END = (b"\r\n", b"\n", b"")

_stdlib_parse_headers = http.client.parse_headers


def parse_headers(fp: Any, _class: type = http.client.HTTPMessage) -> Any:
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]  # its limits too
    fields = []
    match = _FIELD.fullmatch
    for raw in lines:
        if raw in _END:
            break
        m = match(raw.decode("iso-8859-1"))
        if m is None:
            return _standard(lines, _class)
        fields.append(m.groups())
    message = _class()
    message._headers = fields
    message.set_payload("")
    return message


def _standard(lines: list[bytes], _class: type) -> Any:
    """What http.client.parse_headers makes of these lines."""
    return _stdlib_parse_headers(io.BytesIO(b"".join(lines)), _class)


def install() -> None:
    http.client.parse_headers = parse_headers  # type: ignore[assignment]
