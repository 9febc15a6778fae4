"""`llmctl worker` from parsed arguments to a running supervisor: options checked, the
binary found and asked what it supports, logging set up; then supervisor.py runs."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys
from pathlib import Path

from llmctl.core.paths import Paths
from llmctl.worker import rpc_server
from llmctl.worker.supervisor import RpcSupervisor

EXIT_USAGE, EXIT_UNAVAILABLE = 2, 8
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s llmctl-worker[%(process)d] %(levelname)s "
                        "%(message)s")
    try:
        options, name = _options(args)
    except rpc_server.WorkerSetupError as e:
        print(f"llmctl worker: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        binary = rpc_server.find_binary(options.binary, _configured_server())
        argv = rpc_server.build_argv(binary, rpc_server.flags_of(binary), options)
    except rpc_server.WorkerSetupError as e:
        print(f"llmctl worker: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    log_path = Path(args.log).expanduser().absolute() if args.log else \
        Paths.from_env().logs_dir / f"worker-{name}.log"
    # the supervisor's own lines go to the log file too: one file tells the whole story
    log_path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_path, encoding="utf-8", delay=True)
    to_file.setFormatter(logging.Formatter("--- llmctl worker %(asctime)s %(levelname)s "
                                           "%(message)s"))
    logging.getLogger().addHandler(to_file)
    if not ipaddress.ip_address(options.host).is_loopback:
        logging.getLogger("llmctl.worker").warning(
            "listening on %s (--allow-network): rpc-server has no authentication; let only "
            "the llmctld host reach port %d", options.host, options.port)
    supervisor = RpcSupervisor(argv, rpc_server.environment(options), options, log_path,
                               title=name if args.name else options.address)
    return supervisor.run()


def _options(args: argparse.Namespace) -> tuple[rpc_server.ServerOptions, str]:
    if not 1 <= args.port <= 65535:
        raise rpc_server.WorkerSetupError(f"--port {args.port} is not a port number")
    if args.threads is not None and args.threads < 1:
        raise rpc_server.WorkerSetupError("--threads must be at least 1")
    name = args.name or str(args.port)
    if not NAME_RE.fullmatch(name):
        raise rpc_server.WorkerSetupError(f"--name {name!r}: use letters, digits, '.', '_' "
                                          "or '-'")
    host = rpc_server.listen_address(args.host, args.port, args.allow_network)
    devices = tuple(d.strip() for arg in args.device for d in arg.split(",") if d.strip())
    cache_dir = Path(args.cache_dir).expanduser().absolute() if args.cache_dir else None
    return rpc_server.ServerOptions(
        host=host, port=args.port, threads=args.threads, devices=devices,
        cache=args.cache or cache_dir is not None, cache_dir=cache_dir, binary=args.binary,
        allow_network=args.allow_network), name


def _configured_server() -> str | None:
    """server.binary from llmctl's config on this host, when there is one: an rpc-server
    beside that llama-server is the matching build."""
    from llmctl.core.config import ConfigError, load_global

    try:
        return str(load_global(Paths.from_env().config_file).data["server"]["binary"])
    except ConfigError as e:
        logging.getLogger("llmctl.worker").warning("ignoring llmctl's configuration: %s", e)
        return None
