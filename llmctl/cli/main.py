"""`llmctl`: switch, stop and inspect the model behind llmctld's OpenAI endpoint.

Exit codes (also in `llmctl --help`):
  0 ok · 1 error, or `active` with no model · 2 usage · 3 daemon not running · 4 not found ·
  5 ambiguous · 6 busy · 7 load failed · 8 model or backend unavailable (config, binary, port,
  RPC worker, memory; for `launch`: the model cannot serve the agent, or it is not installed)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmctl import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
EXIT_NOT_FOUND, EXIT_AMBIGUOUS, EXIT_BUSY, EXIT_LOAD_FAILED, EXIT_UNAVAILABLE = 4, 5, 6, 7, 8

EXIT_FOR_CODE = {
    "not_running": EXIT_NOT_RUNNING, "not_found": EXIT_NOT_FOUND, "no_log": EXIT_NOT_FOUND,
    "no_model": EXIT_NOT_FOUND, "ambiguous": EXIT_AMBIGUOUS, "busy": EXIT_BUSY,
    "load_failed": EXIT_LOAD_FAILED, "load_timeout": EXIT_LOAD_FAILED,
    "load_stalled": EXIT_LOAD_FAILED,
    "cancelled": EXIT_LOAD_FAILED, "unavailable": EXIT_UNAVAILABLE,
    "config_error": EXIT_UNAVAILABLE, "backend_setup": EXIT_UNAVAILABLE,
    "port_in_use": EXIT_UNAVAILABLE, "insufficient_memory": EXIT_UNAVAILABLE,
}

EPILOG = """exit codes:
  0 ok   1 error (or `active` with no model)   2 usage   3 llmctld not running
  4 model not found   5 ambiguous model name   6 busy (requests in flight)
  7 load failed or timed out   8 model or backend unavailable (config, binary, port,
  RPC worker, not enough free memory; `launch`: the model cannot serve the agent
  (no tool calls, too small a context) or the agent is not installed)
  130 interrupted (Ctrl-C)

environment: LLMCTL_HOST, LLMCTL_PORT (where llmctld listens), LLMCTL_HOME, LLMCTL_RUNTIME_HOME"""


COMPLETION_HELP = """print a shell completion script for llmctl; model ids complete from the
running daemon.

  bash:  echo 'eval "$(llmctl completion bash)"' >> ~/.bashrc
  zsh:   echo 'eval "$(llmctl completion zsh)"' >> ~/.zshrc    (after compinit)
  fish:  llmctl completion fish > ~/.config/fish/completions/llmctl.fish"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmctl", description="Control llmctld: one local GGUF model at a time behind "
        "one OpenAI endpoint,\nmodel id `local` (by default http://127.0.0.1:16384/v1; "
        "`llmctl status` shows the daemon's address).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"llmctl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, *, json_flag: bool = False, aliases: tuple[str, ...] = ()
            ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_, description=help_, aliases=list(aliases),
                             epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        if json_flag:
            cmd.add_argument("--json", action="store_true", help="print JSON")
        return cmd

    for name, aliases in (("switch", ("serve",)),):
        cmd = add(name, "switch the active model (fuzzy match), showing load progress",
                  aliases=aliases, json_flag=True)
        cmd.add_argument("model", help="model id or part of it (e.g. qwen3.5)")
        cmd.add_argument("--force", action="store_true",
                         help="switch even while requests are in flight (they are cut off)")
        cmd.add_argument("--pin", action="store_true",
                         help="keep the model loaded: never unload it for idleness (a later "
                         "switch without --pin unpins it)")
        cmd.add_argument("--fit", action="store_true",
                         help="if it does not fit in free memory as configured, load it with "
                         "the smaller context (and GPU layers) that fits")
        cmd.add_argument("--no-fit-check", action="store_true",
                         help="load it even when its estimated memory does not fit")
    cmd = add("stop", "stop the active model", json_flag=True)
    cmd.add_argument("--force", action="store_true", help="stop even while requests are in flight")
    add("status", "daemon and backend status", json_flag=True)
    add("active", "print the active model id (exit 1 if none)", json_flag=True)
    cmd = add("models", "list discovered models", json_flag=True)
    cmd.add_argument("--ids", action="store_true", help="print only the model ids, one per line")
    cmd = add("inspect", "a model's merged configuration and GGUF facts", json_flag=True)
    cmd.add_argument("model", help="model id or part of it")
    cmd = add("logs", "show the log of the active (or named) model")
    cmd.add_argument("model", nargs="?", help="model id (default: the active model)")
    cmd.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    cmd.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    add("reload", "re-discover models and re-read the configuration", json_flag=True)
    from llmctl.cli.connect import CLIENT_NAMES

    cmd = add("connect", "print (or --write) a client app's configuration for this daemon",
              json_flag=True)
    cmd.add_argument("client", choices=CLIENT_NAMES, help="the client (claude is claude-code)")
    cmd.add_argument("--write", action="store_true",
                     help="merge it into the client's configuration file (with a backup)")
    from llmctl.cli import launch

    launch.add_arguments(add("launch", "start a coding agent (claude, opencode, codex, aider) "
                             "on the active model, after checking the model can serve it",
                             json_flag=True))
    cmd = add("add", "register a GGUF that lives elsewhere (links it into gguf/<id>/)",
              json_flag=True)
    cmd.add_argument("path", help="the .gguf file (for a split model, any shard)")
    cmd.add_argument("--id", help="model id (default: from the file name)")
    cmd.add_argument("--name", help="display name (default: the GGUF's general.name)")
    cmd.add_argument("--move", action="store_true",
                     help="move the file(s) into gguf/<id>/ instead of linking (never copies)")
    cmd = add("pull", "download a GGUF model from Hugging Face and register it",
              json_flag=True)
    cmd.add_argument("spec", metavar="REPO[:QUANT|FILE]",
                     help="e.g. unsloth/Qwen3-8B-GGUF:Q4_K_M (default quantisation Q4_K_M)")
    cmd.add_argument("--id", help="model id (default: from the repository and file)")
    cmd.add_argument("--name", help="display name (default: the GGUF's general.name)")
    from llmctl.cli import activity, cache, top

    cache.add_arguments(add("cache", "saved KV caches (model, tokens, size, age, fingerprint "
                            "match); `cache clear [MODEL]` removes them", json_flag=True))

    activity.add_arguments(add("activity", "recent requests: route, model, status, timings, "
                               "tokens, tokens/s", json_flag=True))
    top.add_arguments(add("top", "a live view: model, state, in flight, requests/min, "
                          "tokens/s, the last requests"))
    from llmctl.cli import worker_args

    worker_args.add_arguments(add("worker", "run a llama.cpp rpc-server here, supervised, for "
                                  "a llmctld elsewhere (see `llmctl worker --help`)"))
    cmd = add("completion", "print a shell completion script (see `llmctl completion --help`)")
    cmd.description = COMPLETION_HELP
    cmd.add_argument("shell", choices=("bash", "zsh", "fish"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    agent_args: list[str] = []
    if "launch" in argv and "--" in argv[argv.index("launch"):]:  # the agent's arguments
        cut = argv.index("--", argv.index("launch"))
        argv, agent_args = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    args.agent_args = agent_args
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    from llmctl.client.api import ApiError, Client, ClientError

    command = {"serve": "switch"}.get(args.command, args.command)
    if command == "completion":
        from llmctl.cli.completion import script

        sys.stdout.write(script(args.shell, parser))
        return EXIT_OK
    if command == "connect":
        from llmctl.cli.connect import run
        from llmctl.client.api import daemon_url

        try:
            url = daemon_url()
        except ClientError as e:
            return fail(str(e), e.code, {}, args.json)
        return run(args.client, args.write, args.json, url)
    if command == "worker":  # runs here, in the foreground; needs no daemon
        from llmctl.worker.command import run as run_worker

        return run_worker(args)
    if command in ("add", "pull"):  # local work: they need no daemon
        from llmctl.cli import acquire

        return acquire.COMMANDS[command](args)
    try:
        client = Client()
        return COMMANDS[command](client, args)
    except ApiError as e:
        return fail(e.message, e.code, e.data, getattr(args, "json", False))
    except ClientError as e:
        return fail(str(e), e.code, {}, getattr(args, "json", False))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def fail(message: str, code: str, data: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message, **data}}))
    else:
        print(f"llmctl: {message}", file=sys.stderr)
        for line in data.get("log_tail") or []:
            print(f"  | {line}", file=sys.stderr)
        if data.get("log_tail"):
            print("  (full log: llmctl logs " + str(data.get("model") or "") + ")",
                  file=sys.stderr)
    return EXIT_FOR_CODE.get(code, EXIT_ERROR)


# --- commands ---------------------------------------------------------------------------------


def cmd_switch(client: Any, args: argparse.Namespace) -> int:
    from llmctl.cli.progress import Progress

    progress = Progress(sys.stderr, quiet=args.json)
    final: dict[str, Any] = {}
    try:
        for event in client.switch(args.model, force=args.force, pin=args.pin, fit=args.fit,
                                   fit_check=not args.no_fit_check):
            progress.update(event)
            final = event
    finally:
        progress.close()
    if final.get("event") == "ready":
        if args.json:
            print(json.dumps(final))
        else:
            from llmctl.cli.render import duration

            verb = "already active" if final.get("already_active") else (
                f"ready in {duration(final.get('load_seconds'))}")
            print(f"{final['model']} {verb} — {client.url}/v1, model `local`")
        return EXIT_OK
    code = final.get("code", "load_failed")
    return fail(final.get("message") or "the switch did not finish", code,
                {k: v for k, v in final.items() if k not in ("event", "code", "message")},
                args.json)


def cmd_stop(client: Any, args: argparse.Namespace) -> int:
    result = client.stop(force=args.force)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"stopped {result['stopped']}" if result.get("stopped") else "no model was running")
    return EXIT_OK


def cmd_status(client: Any, args: argparse.Namespace) -> int:
    status = client.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    from llmctl.cli.render import render_status

    print(render_status(status, client.url))
    return EXIT_OK


def cmd_active(client: Any, args: argparse.Namespace) -> int:
    active = client.active()
    if args.json:
        print(json.dumps(active))
    elif active.get("model"):
        print(active["model"])
    return EXIT_OK if active.get("model") else EXIT_ERROR


def cmd_models(client: Any, args: argparse.Namespace) -> int:
    data = client.models()
    if args.ids:
        print("\n".join(m["id"] for m in data["models"]))
        return EXIT_OK
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    from llmctl.cli.render import render_models

    print(render_models(data))
    return EXIT_OK


def cmd_inspect(client: Any, args: argparse.Namespace) -> int:
    from llmctl.client.api import ApiError

    try:
        data = client.model(args.model)
    except ApiError as e:
        if e.code != "not_found":
            raise
        # not an exact id: resolve it the way `switch` would
        models = {m["id"]: m["name"] for m in client.models()["models"]}
        from llmctl.core.resolve import resolve

        match = resolve(args.model, models)
        if match.kind != "match" or match.model is None:
            code = "ambiguous" if match.kind == "ambiguous" else "not_found"
            what = "matches several models" if code == "ambiguous" else "matches no model"
            hint = (f": {', '.join(match.candidates)}" if match.candidates else
                    "; run `llmctl models` to see what is available")  # as `switch` says
            return fail(f"{args.model!r} {what}{hint}", code,
                        {"candidates": match.candidates}, args.json)
        data = client.model(match.model)
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    from llmctl.cli.render import render_inspect

    print(render_inspect(data))
    return EXIT_OK


def cmd_logs(client: Any, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    for chunk in client.logs(args.model, args.lines, args.follow):
        out.write(chunk)
        out.flush()
    return EXIT_OK


def cmd_reload(client: Any, args: argparse.Namespace) -> int:
    result = client.reload()
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"{result['models']} model(s)" + (
        f"; added {', '.join(result['added'])}" if result["added"] else "") + (
        f"; removed {', '.join(result['removed'])}" if result["removed"] else ""))
    for bad in result["unavailable"]:
        print(f"  unavailable: {bad['id']}: {bad['error']}")
    if result.get("config_error"):
        print(f"  config error: {result['config_error']}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


def cmd_activity(client: Any, args: argparse.Namespace) -> int:
    from llmctl.cli import activity

    return activity.run(client, args)


def cmd_cache(client: Any, args: argparse.Namespace) -> int:
    from llmctl.cli import cache

    return cache.run(client, args)


def cmd_launch(client: Any, args: argparse.Namespace) -> int:
    from llmctl.cli import launch

    return launch.run(client, args)


def cmd_top(client: Any, args: argparse.Namespace) -> int:
    from llmctl.cli import top

    return top.run(client, args)


COMMANDS = {
    "switch": cmd_switch, "stop": cmd_stop, "status": cmd_status, "active": cmd_active,
    "models": cmd_models, "inspect": cmd_inspect, "logs": cmd_logs, "reload": cmd_reload,
    "activity": cmd_activity, "top": cmd_top, "cache": cmd_cache, "launch": cmd_launch,
}


if __name__ == "__main__":
    sys.exit(main())
