"""The start-up checks that need the configuration, done in a short-lived forked child.

The supervisor lives as long as the daemon, and whatever it imports stays in its memory for
good. The configuration stack (the YAML parser, the schema, ipaddress, copy) is needed once at
start-up: to choose the address to listen on and to refuse a broken config with one clear
message. A child does that and sends back plain data; the workers import what they need
themselves.
"""

from __future__ import annotations

import json
import os
import select
import signal
from collections.abc import Callable
from typing import Any, NamedTuple

from llmctl.core.paths import Paths, env_address

TIMEOUT = 60.0  # reading a config file takes milliseconds; this only bounds the wait


class PreflightError(Exception):
    """The daemon must not start; the message says why and what to do."""


class Startup(NamedTuple):
    host: str
    port: int
    remote: bool  # listening beyond loopback (allowed by daemon.allow_remote)
    config: dict[str, Any]  # GlobalConfig.data
    config_exists: bool
    warning: str | None = None  # from prepare: for the log, never fatal


def check(paths: Paths, host: str | None, port: int | None, prepare: bool = False,
          meanwhile: Callable[[], None] | None = None) -> Startup:
    """Load and check the global config and settle host and port (--host/--port, then
    LLMCTL_HOST/LLMCTL_PORT, then the config), in a child. Raises PreflightError.

    With `prepare` (the caller holds the pid lock), the same child then assembles the
    starter model (once) and puts any warning in the result: one child and one import of
    the config stack on the way to serving instead of two (a cold start's critical path).
    `meanwhile` runs here while the child works (llmctld imports the supervisor's modules:
    the two overlap on a machine with more than one core)."""
    def work() -> Startup:
        startup = _settle(paths, host, port)
        if not prepare:
            return startup
        try:
            warning = _prepare_starter(paths, startup)
        except Exception as e:  # noqa: BLE001 - never fatal: the daemon serves the others
            warning = f"could not prepare the starter model: {type(e).__name__}: {e}"
        return startup._replace(warning=warning)

    return Startup(*_in_child(work, meanwhile))


def _in_child(work: Callable[[], Any], meanwhile: Callable[[], None] | None = None) -> Any:
    """Run `work` in a forked child and return its JSON-able result (PreflightError, or any
    other exception as one, when it fails); `meanwhile` here, while it runs."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        try:
            reply: dict[str, Any] = {"result": work()}
        except PreflightError as e:
            reply = {"error": str(e)}
        except BaseException as e:  # noqa: BLE001 - whatever it is, the parent must hear it
            reply = {"error": f"cannot read the configuration: {type(e).__name__}: {e}"}
        data = json.dumps(reply).encode()
        try:
            while data:
                data = data[os.write(write_end, data):]
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        if meanwhile is not None:
            meanwhile()
        raw = _read_all(read_end)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_end)
        _reap(pid)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise PreflightError("the configuration check ended without an answer "
                             f"({len(raw)} bytes); run llmctld again") from None
    if "error" in reply:
        raise PreflightError(reply["error"])
    return reply["result"]


def _prepare_starter(paths: Paths, startup: Startup) -> str | None:
    from llmctl.core.config import GlobalConfig
    from llmctl.daemon.backend import starter

    cfg = GlobalConfig(startup.config, paths.config_file, exists=startup.config_exists)
    try:
        starter.ensure(paths, cfg)
    except (OSError, ValueError) as e:  # the daemon serves the other models
        return f"could not prepare the starter model: {e}"
    return None


def _settle(paths: Paths, host_arg: str | None, port_arg: int | None) -> Startup:
    from llmctl.core.config import ConfigError, is_loopback, load_global

    try:
        cfg = load_global(paths.config_file)
    except ConfigError as e:
        raise PreflightError(f"cannot start: {e}") from None
    try:
        env_host, env_port = env_address()
    except ValueError as e:
        raise PreflightError(str(e)) from None
    daemon = cfg.data["daemon"]
    host = host_arg or env_host or daemon["host"]
    port = next(p for p in (port_arg, env_port, daemon["port"]) if p is not None)
    remote = not is_loopback(host)
    if remote and not daemon["allow_remote"]:
        raise PreflightError(
            f"refusing to listen on {host}: llmctld has no authentication, so anyone who "
            "can reach that address could use your GPU. Set `daemon.allow_remote: true` in "
            f"{paths.config_file} if you really mean it.")
    return Startup(host, port, remote, cfg.data, cfg.exists)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        readable, _, _ = select.select([fd], [], [], TIMEOUT)
        if not readable:
            raise PreflightError(f"the configuration check took over {TIMEOUT:.0f} s; is "
                                 "the config directory on a hung file system?")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
