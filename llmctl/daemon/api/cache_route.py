"""The saved KV caches through the control API (`llmctl cache`, the dashboard):

    GET  /cache                  every save: model, tokens, size, age, whether it matches
                                 what its model would be launched with now; disk use
    POST /cache/clear[?model=M]  remove the saves (all, or M's) and what was learned of
                                 their restores

Both are answered by the lifecycle worker (a `Cache` command): it alone writes the store, so a
clear waits for a save under way instead of racing it. Like every route, behind the
Host/Origin guard (App.__call__).
"""

from __future__ import annotations

from typing import Any

from werkzeug.wrappers import Request, Response

from llmctl.core.config import MODEL_ID_RE
from llmctl.daemon.ipc import protocol as p


def cache_response(request: Request, hub: Any, clear: bool, ok: Any, failure: Any,
                   error: Any) -> Response:
    """`ok(data)`, `failure(reply)` and `error(status, code, message)` build the answers."""
    model = request.args.get("model") or None
    if model is not None and not MODEL_ID_RE.fullmatch(model):
        return error(400, "bad_model_id", f"{model!r} is not a model id")
    if clear:
        reply = hub.commands.send(p.Cache, action="clear", model=model).reply()
    else:
        reply = hub.commands.send(p.Cache).reply()
    if not reply.ok:
        return failure(reply)
    data = {k: v for k, v in reply.data.items() if k != "kv_events"}
    if not clear and model is not None:
        data["caches"] = [c for c in data["caches"] if c["model"] == model]
    return ok(data)
