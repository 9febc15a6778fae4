"""`llmctl add` and `llmctl pull`: getting models in. Both work on $LLMCTL_HOME directly and
need no daemon (it discovers the new model on its next `models` or `switch`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmctl.core.paths import Paths

EXIT_OK, EXIT_ERROR = 0, 1


def cmd_add(args: argparse.Namespace) -> int:
    from llmctl.core.register import RegisterError, register

    try:
        done = register(Paths.from_env(), Path(args.path), model_id=args.id, name=args.name,
                        move=args.move)
    except RegisterError as e:
        return _fail(str(e), "add_failed", args.json)
    if args.json:
        print(json.dumps({"id": done.id, "name": done.name, "directory": str(done.directory),
                          "config_file": str(done.config_file), "moved": done.moved,
                          "files": [{"path": str(a), "source": str(b)} for a, b in done.files],
                          "config": done.config}))
        return EXIT_OK
    print(report(done))
    return EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    from llmctl.cli.download_progress import DownloadProgress
    from llmctl.core.pull import PullError, pull

    progress = None if args.json else DownloadProgress(sys.stderr)
    last: dict[str, Any] = {}

    def emit(event: dict[str, Any]) -> None:
        last.clear()
        last.update(event)
        if progress is None:
            print(json.dumps(event), flush=True)
        else:
            progress.update(event)

    try:
        done = pull(Paths.from_env(), args.spec, emit, model_id=args.id, name=args.name)
    except KeyboardInterrupt:  # outside a file's download (listing, hashing): nothing to keep
        if progress is not None:
            progress.close()
        print("llmctl: pull interrupted; nothing was registered", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PullError as e:
        if progress is None:
            emit({"event": "error", "code": e.code, "message": e.message,
                  "choices": e.choices})
        else:
            progress.close()
            print(f"llmctl: {e.message}", file=sys.stderr)
        return EXIT_FOR_PULL.get(e.code, EXIT_ERROR)
    if progress is not None:
        progress.close()
        print(report(done) if done is not None else f"already registered: {last['id']}\n"
              f"next: llmctl switch {last['id']}")
    return EXIT_OK



# the CLI's exit codes (see main.EPILOG): 2 usage, 4 not found, 5 ambiguous; 130 as a shell
# reports Ctrl-C
EXIT_INTERRUPTED = 130
EXIT_FOR_PULL = {"bad_spec": 2, "not_found": 4, "ambiguous": 5,
                 "interrupted": EXIT_INTERRUPTED}


def report(done: Any) -> str:
    """What `add` (and `pull`) wrote, and the next command."""
    verb = "moved " if done.moved else "linked"
    lines = [f"added {done.id} ({done.name})", f"  wrote  {done.config_file}"]
    lines += [f"  {verb} {inside} {'<-' if done.moved else '->'} {source}"
              for inside, source in done.files]
    lines.append(f"next: llmctl switch {done.id}")
    return "\n".join(lines)


def _fail(message: str, code: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    else:
        print(f"llmctl: {message}", file=sys.stderr)
    return EXIT_ERROR


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"add": cmd_add, "pull": cmd_pull}
