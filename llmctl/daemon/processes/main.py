"""`llmctld`: start the daemon in the foreground.

Checks everything that can be checked before forking the workers (config, runtime dir, the pid
lock, the port) so a misconfiguration fails here with one clear message instead of in a worker
loop. The config is read in a short-lived child (preflight), so this process, which becomes
the supervisor, never holds the config stack.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import socket
import sys
import time
from pathlib import Path

from llmctl import __version__
from llmctl.core.paths import Paths
from llmctl.daemon.processes import preflight, slim

log = logging.getLogger("llmctld")


class StartupError(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="llmctld",
        description="Run the llmctl daemon in the foreground: it owns one llama-server and "
        "serves the control API and an OpenAI-compatible proxy (/v1) on one port.",
        epilog="Signals: TERM/INT stop the daemon and its llama-server; HUP reloads the "
        "configuration and models; USR2 restarts the proxy worker without touching the model. "
        "Environment: LLMCTL_HOME, LLMCTL_RUNTIME_HOME, LLMCTL_HOST, LLMCTL_PORT.")
    p.add_argument("--host", help="address to listen on (default: daemon.host, 127.0.0.1)")
    p.add_argument("--port", type=int,
                   help="port to listen on (default: daemon.port, 16384; 0 picks a free one)")
    p.add_argument("--log-level", default=os.environ.get("LLMCTL_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"],
                   help="what the daemon logs to stderr (default: $LLMCTL_LOG_LEVEL, else info)")
    p.add_argument("--version", action="version", version=f"llmctld {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s llmctld[%(process)d] %(levelname)s %(message)s")
    try:
        return serve(args)
    except StartupError as e:
        log.error("%s", e)
        return 1


def serve(args: argparse.Namespace) -> int:
    paths = Paths.from_env()
    _prepare_dirs(paths)
    lock_fd = _lock_pidfile(paths.pid_file)
    # In one child: the supervisor never imports the config stack. It checks the config and
    # settles the address, then (the pid lock is ours) assembles the starter model once.
    try:
        startup = preflight.check(paths, args.host, args.port, prepare=True,
                                  meanwhile=_import_supervisor)
    except preflight.PreflightError as e:
        _release_pidfile(paths.pid_file, lock_fd)
        raise StartupError(str(e)) from None
    host, port = startup.host, startup.port
    if startup.remote:
        log.warning("LISTENING ON %s, BEYOND THIS MACHINE, WITHOUT AUTHENTICATION", host)
    if startup.warning:
        log.warning("%s", startup.warning)
    # ours alone now (the lock): a new daemon's counters start from zero (daemon/observe/metrics.py)
    from llmctl.daemon.observe.metrics import clear_store

    clear_store(paths.runtime)
    try:
        listener = _bind(host, port)
    except StartupError:
        _release_pidfile(paths.pid_file, lock_fd)
        raise
    port = listener.getsockname()[1]  # the real one when asked for port 0
    daemon_info = {"pid": os.getpid(), "host": host, "port": port, "started_at": time.time(),
                   "version": __version__}
    log.info("llmctld %s listening on http://%s:%d (home %s, runtime %s)", __version__,
             host if ":" not in host else f"[{host}]", port, paths.home, paths.runtime)

    def proxy_main(sock: socket.socket) -> int:
        from llmctl.core.config import GlobalConfig
        from llmctl.daemon.processes import proxy_worker  # imports gevent: only ever in the child

        cfg = GlobalConfig(startup.config, paths.config_file, exists=startup.config_exists)
        return proxy_worker.run(listener, sock, paths, daemon_info, cfg)

    def lifecycle_main(sock: socket.socket) -> int:
        from llmctl.daemon.processes import lifecycle_worker

        return lifecycle_worker.run(sock, paths, daemon_info)

    import gc

    from llmctl.daemon.processes.supervisor import Supervisor

    # Everything allocated so far is inherited by every worker: keep the cyclic GC (in the
    # workers and here) from writing to those objects, which would copy their pages into each
    # process (measured: about 2 MB PSS less across the three)
    gc.freeze()
    slim.give_back_free_memory()  # what start-up freed: not inherited by every worker
    supervisor = Supervisor(listener, proxy_main, lifecycle_main, close_in_children=(lock_fd,))
    try:
        code = supervisor.run()
    finally:
        listener.close()
        _release_pidfile(paths.pid_file, lock_fd)
    log.info("llmctld stopped")
    return code


def _import_supervisor() -> None:
    """What this process needs next, imported while the preflight child reads the config."""
    import setproctitle  # noqa: F401

    import llmctl.daemon.observe.metrics  # noqa: F401
    import llmctl.daemon.processes.supervisor  # noqa: F401


def _prepare_dirs(paths: Paths) -> None:
    for directory in (paths.runtime, paths.logs_dir):
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StartupError(f"cannot create {directory}: {e.strerror}; set "
                               "LLMCTL_RUNTIME_HOME to a writable directory") from None
    if not os.access(paths.runtime, os.W_OK):
        raise StartupError(f"{paths.runtime} is not writable; set LLMCTL_RUNTIME_HOME to a "
                           "writable directory")
    try:
        os.chmod(paths.runtime, 0o700)
    except OSError:
        pass  # not ours to change (e.g. a shared dir); the files inside stay 0600


def _lock_pidfile(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(f"llmctld is already running (pid {other}) with runtime dir "
                           f"{path.parent}; stop it first (kill {other})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _release_pidfile(path: Path, fd: int) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use (another llmctld or "
                               "another program); stop it, or choose another port with "
                               "--port / LLMCTL_PORT / daemon.port") from None
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(1024)
    return sock


if __name__ == "__main__":
    sys.exit(main())
