"""`llmctl launch <agent> [-- agent args]`: start a coding agent on llmctld's model.

First it checks what would make the agent fail after it started (the agents retry for
minutes, or die on their first request): that llmctld runs, that a model is active or a
default model is set, that the model can take requests with tools if the agent sends them,
and that its context holds the agent's own prompt (agents.py has the table). Each refusal
says what to do, with the CLI's exit codes (3 llmctld not running, 4 no model, 8 the model
cannot serve this agent or the agent is not installed). Then it replaces itself with the
agent (os.execvpe), pointed at llmctld for this run only: environment variables, arguments,
and for opencode a config file in a new private temporary directory. The user's own files
are not touched unless `--write` merges the `llmctl connect` recipe into them first.

`--dry-run` prints the environment, files and command instead (`--json`: as data).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from llmctl.cli.agents import AGENT_NAMES, Agent, agent

EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 0, 2, 4, 8
SUGGESTED_MODEL = "unsloth/Qwen3-8B-GGUF:Q4_K_M"  # tools, a 40k context


class Refused(Exception):
    def __init__(self, message: str, code: str, exit_code: int):
        super().__init__(message)
        self.message, self.code, self.exit_code = message, code, exit_code


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    # what follows `--` is the agent's: main() takes it off before parsing
    cmd.usage = "llmctl launch [-h] [--json] [--dry-run] [--write] AGENT [-- AGENT ARGS ...]"
    cmd.add_argument("agent", choices=AGENT_NAMES,
                     help="the coding agent (claude is claude-code); arguments for it go "
                     "after --")
    cmd.add_argument("--dry-run", action="store_true",
                     help="print the environment, files and command instead of starting it")
    cmd.add_argument("--write", action="store_true",
                     help="also merge the `llmctl connect` recipe into the agent's own "
                     "configuration file (with a backup)")


def context_of(model: dict[str, Any]) -> int:
    """The context one request gets: llama.ctx_size (0: the trained context) over the slots."""
    config = model.get("config") or {}
    llama = config.get("llama") or {}
    ctx = int(llama.get("ctx_size") or (model.get("gguf") or {}).get("context_length") or 0)
    return ctx // max(1, int(llama.get("parallel") or 1))


def check(spec: Agent, client: Any) -> tuple[dict[str, Any], int]:
    """The model the agent would get and its context per request; raises Refused."""
    active = client.active()
    model_id = active.get("model") or active.get("default_model")
    if not model_id:
        raise Refused(
            f"no model is active and no default model is set, so {spec.title} would have "
            f"nothing to talk to: `llmctl switch <model>` (see `llmctl models`), or get one "
            f"that suits it: `llmctl pull {SUGGESTED_MODEL}`", "no_model", EXIT_NOT_FOUND)
    model = client.model(model_id)
    if not model.get("available", True):
        raise Refused(f"model {model_id} is unavailable: {model.get('error')}", "unavailable",
                      EXIT_UNAVAILABLE)
    if spec.needs_tools and model.get("tool_calls") is False:
        raise Refused(
            f"model {model_id} cannot serve {spec.title}, which sends tools: "
            f"{model.get('tool_calls_note')}. Or `llmctl pull {SUGGESTED_MODEL}` and switch "
            "to it", "no_tool_calls", EXIT_UNAVAILABLE)
    context = context_of(model)
    if context and context < spec.min_context:
        where = f" in {model['config_file']}" if model.get("config_file") else ""
        raise Refused(
            f"model {model_id} has a {context}-token context, too small for {spec.title}: "
            f"{spec.prompt_note}, so it needs at least {spec.min_context}. Raise "
            f"llama.ctx_size to {spec.min_context} or more{where} (then `llmctl switch "
            f"{model_id}`), or use a model with a larger context (`llmctl pull "
            f"{SUGGESTED_MODEL}`)", "context_too_small", EXIT_UNAVAILABLE)
    return model, context


def run(client: Any, args: argparse.Namespace) -> int:
    spec = agent(args.agent)
    extra = list(getattr(args, "agent_args", None) or [])
    try:
        model, context = check(spec, client)
    except Refused as e:
        return _refuse(e, args.json)
    program = shutil.which(spec.program)
    if program is None and not args.dry_run:
        return _refuse(Refused(
            f"{spec.title} is not installed: no `{spec.program}` on PATH ({_install(spec)})",
            "not_installed", EXIT_UNAVAILABLE), args.json)
    if args.write and spec.connect is None:
        return _refuse(Refused(f"{spec.title} has no configuration file llmctl can edit; "
                               "launch it without --write", "usage", EXIT_USAGE), args.json)
    private = Path(tempfile.gettempdir()) / "llmctl-launch-XXXXXX" if args.dry_run else \
        Path(tempfile.mkdtemp(prefix="llmctl-launch-"))
    setup = spec.setup(client.url, private, context)
    argv = [spec.program, *setup.args, *extra]
    if args.dry_run:
        return _print(spec, model, context, setup, private, argv, program, args.json)
    if args.write:
        from llmctl.cli.connect import RECIPES, write

        assert spec.connect is not None
        path, _ = write(RECIPES[spec.connect], client.url, dict(os.environ))
        print(f"llmctl: wrote {spec.title}'s configuration to {path}", file=sys.stderr)
    for name, text in setup.files.items():
        target = private / name
        target.write_text(text, encoding="utf-8")
        target.chmod(0o600)
    if not setup.files:
        private.rmdir()
    print(f"llmctl: starting {spec.title} on {model['id']} ({context}-token context) via "
          f"{client.url}", file=sys.stderr)
    sys.stderr.flush()
    env = {k: v for k, v in os.environ.items() if k not in setup.unset}
    os.execvpe(program or spec.program, argv, {**env, **setup.env})
    return EXIT_OK  # not reached


def _install(spec: Agent) -> str:
    return {"claude": "npm install -g @anthropic-ai/claude-code",
            "opencode": "npm install -g opencode-ai", "codex": "npm install -g @openai/codex",
            "aider": "pipx install aider-chat"}.get(spec.program, "install it")


def _refuse(e: Refused, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": {"code": e.code, "message": e.message}}))
    else:
        print(f"llmctl: {e.message}", file=sys.stderr)
    return e.exit_code


def _print(spec: Agent, model: dict[str, Any], context: int, setup: Any, private: Path,
           argv: list[str], program: str | None, as_json: bool) -> int:
    files = {str(private / name): text for name, text in setup.files.items()}
    if as_json:
        print(json.dumps({"agent": spec.name, "model": model["id"], "context": context,
                          "tool_calls": model.get("tool_calls"), "env": setup.env,
                          "unset": list(setup.unset),
                          "files": files, "argv": argv, "installed": program is not None}))
        return EXIT_OK
    print(f"# {spec.title} on {model['id']} ({context}-token context per request; needs "
          f"{spec.min_context}" + (", tool calls ok" if spec.needs_tools else "") + ")")
    if program is None:
        print(f"# not installed: {_install(spec)}")
    print("# environment (for this run only):")
    for name, value in setup.env.items():
        print(f"{name}={shlex.quote(value)}")
    for name in setup.unset:
        print(f"unset {name}")
    for path, text in files.items():
        print(f"# {path} (a new private directory, for this run only):")
        print(text.rstrip())
    print("# command:")
    print(shlex.join(argv))
    return EXIT_OK
