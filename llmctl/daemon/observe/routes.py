"""The HTTP answers of GET /metrics and GET /activity (JSON, or NDJSON with ?follow=1).

They read what daemon/observe/observer.py's Observer collected; when the configuration turned a part
off, the route says so and how to turn it on.
"""

from __future__ import annotations

from typing import Any

from werkzeug.wrappers import Request, Response

ACTIVITY_LIMIT = 100  # entries in one answer unless ?limit= asks for more (up to the ring)


def metrics(observer: Any | None, error: Any) -> Response:
    if observer is None or observer.metrics is None:
        return error(404, "metrics_off", "metrics are off; set observability.metrics: true in "
                     "config/default.yaml and restart llmctld. (llama-server's own metrics "
                     "are at /backend/metrics)")
    body, content_type = observer.metrics.render()
    return Response(body, content_type=content_type)


def activity(observer: Any | None, request: Request, error: Any,
             json_response: Any) -> Response:
    log = observer.activity if observer is not None else None
    if log is None:
        return error(404, "activity_off", "the activity log is off; set "
                     "observability.activity: true in config/default.yaml and restart llmctld")
    since, limit = request.args.get("since", "0"), request.args.get("limit", "")
    if not since.isdigit() or not (limit.isdigit() or limit == ""):
        return error(400, "bad_query", "since and limit must be whole numbers, e.g. "
                     "/activity?since=120&limit=50")
    count = min(int(limit), log.size) if limit else ACTIVITY_LIMIT
    if request.args.get("follow") in ("1", "true", "yes"):
        return Response(log.follow(int(since), count), mimetype="application/x-ndjson")
    return json_response({"size": log.size, "entries": log.since(int(since), count)})
