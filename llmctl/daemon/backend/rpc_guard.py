"""What the lifecycle does about RPC workers (the checker, daemon/rpc/health.py, is
`ctx.rpc`):

- before a switch spawns anything: refuse at once (`unavailable`, exit 8 in the CLI) a model
  that needs a worker last seen down or busy, naming it — not a load that would abort or
  wait for the 10-minute ready timeout. A worker not looked at yet is looked at now;
- after a llama-server died or failed to load: look at its workers now, and name the one
  that is missing in the failure (llama-server only says "Failed to connect" or "Remote RPC
  server crashed");
- while a backend is ready: if a worker it holds goes away, stop it and record why. Such a
  llama-server would abort on its next request anyway, cutting that client off; and nothing
  restarts it: the next request or switch is refused fast until the worker is back;
- every tick: tell the checker which llama-server holds which workers, and publish the
  results (RpcHealth to every proxy) when they changed.

Stopping the backend before its workers, where llmctl runs both, is the service managers'
order (docs/multi-machine.md): llama-server aborts when a worker vanishes under it.
"""

from __future__ import annotations

import logging
from typing import Any

from llmctl.core.config import model_workers
from llmctl.daemon.backend.context import BackendContext
from llmctl.daemon.backend.llama_server import rpc_addresses
from llmctl.daemon.backend.phases import Failure
from llmctl.daemon.backend.stopping import Stopper
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.rpc.health import Holder
from llmctl.daemon.rpc.records import refusal

log = logging.getLogger("llmctld.lifecycle")

HOLDING_STATES = ("starting", "ready", "stopping")


def refuse_switch(ctx: BackendContext, model: str, cfg: dict[str, Any]) -> str | None:
    """Why a switch to `model` must not start now, or None."""
    try:
        needed = model_workers(cfg)
    except ValueError:
        needed = []
    if not needed:
        return None
    health = ctx.rpc.snapshot()
    unchecked = [n for n, _ in needed if n in health and health[n].state == "unchecked"]
    if unchecked:
        health = ctx.rpc.check_now(unchecked)
    return refusal(model, cfg, health)


def missing_workers(ctx: BackendContext, argv: list[str] | None) -> str | None:
    """After the llama-server with this argv ended: which of its workers are not there."""
    addresses = rpc_addresses(argv)
    if not addresses:
        return None
    names = [w.name for w in ctx.rpc.snapshot().values() if w.address in addresses]
    ctx.rpc.hold(None)  # it is gone: nothing holds them now
    health = ctx.rpc.check_now(names)
    gone = [f"RPC worker {w.name} ({w.address}) is {w.state}: {w.error}"
            for w in health.values() if w.name in names and w.state in ("down", "busy")]
    return "; ".join(gone) or None


def watch(ctx: BackendContext, stopper: Stopper) -> None:
    """The tick's part: who holds what, a worker gone under a ready backend, publishing."""
    backend = ctx.backend
    holds = ctx.proc is not None and backend.state in HOLDING_STATES and backend.model
    addresses = frozenset(rpc_addresses(backend.cmdline)) if holds else frozenset()
    ctx.rpc.hold(Holder(ctx.proc.pid, str(backend.model), addresses, backend.state == "ready")
                 if holds and addresses and ctx.proc is not None else None)
    if backend.state == "ready" and addresses and stopper.stopping is None:
        gone = [w for w in ctx.rpc.snapshot().values()
                if w.address in addresses and w.state == "down"]
        if gone:
            _stop_for(ctx, stopper, gone[0].name, gone[0].address, gone[0].error)
    if ctx.rpc.generation != ctx.rpc_published:
        ctx.rpc_published = ctx.rpc.generation
        ctx.emit(p.RpcHealth(ctx.rpc.public()))


def _stop_for(ctx: BackendContext, stopper: Stopper, name: str, address: str,
              error: str | None) -> None:
    model = str(ctx.backend.model)
    message = (f"RPC worker {name} ({address}) went away under {model}: {error}; llama-server "
               f"was stopped (it cannot run without it). Start the worker again, then switch "
               f"to {model}")
    log.warning("%s", message)
    stopping = stopper.begin([], reason=f"RPC worker {name} went away")
    stopping.failure = Failure("worker_down", message, model, [], None, False)

