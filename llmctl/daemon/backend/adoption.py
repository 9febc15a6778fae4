"""Boot of the lifecycle worker: take over what state.json describes, or clean it up.

A restarted worker (or a restarted llmctld) adopts the llama-server that state.json names when
pid, create time and command line match and it still serves (a busy one is given
server.adoptTimeoutMs to answer /health; one that still listens on its port is adopted even
then); resumes watching a load that was interrupted; and stops whatever else of ours it finds
(a stale backend, an orphan holding the port). Never two llama-servers, never an orphan.
Blocking: it runs before the worker reports Ready (at most server.adoptTimeoutMs longer).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from llmctl.core.log_file import file_size
from llmctl.core.state import Backend, read_state
from llmctl.daemon.backend.context import BackendContext
from llmctl.daemon.backend.loading import Loader
from llmctl.daemon.backend.phases import Load
from llmctl.daemon.backend.process import BackendProcess, await_health, stop_owned_orphans


class Adoption:
    def __init__(self, ctx: BackendContext, loader: Loader):
        self.ctx, self.loader = ctx, loader

    def boot(self) -> list[str]:
        """Take over what state.json describes. Returns notes for the daemon log."""
        ctx = self.ctx
        notes: list[str] = []
        ctx.read_limits()
        data, problem = read_state(ctx.paths.state_file)
        if problem:
            notes.append(problem)
        record = Backend.from_dict(data["backend"]) if data else None
        if record is not None:
            ctx.backend.generation = record.generation
        if record and record.pid and record.state in ("starting", "ready", "stopping"):
            proc = BackendProcess.adopt(record.to_dict())
            if proc is None:
                notes.append(f"llama-server pid {record.pid} from state.json is gone")
            elif record.state == "starting" and record.model:
                notes.append(f"resuming the interrupted load of {record.model} "
                             f"(pid {proc.pid})")
                self._resume_load(proc, record)
            else:
                notes.append(self._adopt_ready(proc, record))
        keep = {ctx.proc.pid} if ctx.proc else set()
        notes += stop_owned_orphans(ctx.paths.runtime, keep | {os.getpid()}, ctx.stop_grace)
        if ctx.proc is None and record is not None and record.state == "failed":
            ctx.backend.transition("failed", model=record.model, error=record.error,
                                   exit_code=record.exit_code, log_tail=record.log_tail)
        elif ctx.proc is None and self.loader.load is None and record is not None:
            ctx.backend.unloaded = record.unloaded  # the next request still wakes it
        ctx.changed()
        return notes

    def _adopt_ready(self, proc: BackendProcess, record: Backend) -> str:
        """Adopt a backend recorded as ready if it still serves (process.await_health: a
        busy one is given server.adoptTimeoutMs to answer, and one that still listens on its
        port is adopted even then); stop it otherwise. Returns the note for the daemon log."""
        ctx = self.ctx
        verdict = "not ready"
        if record.state == "ready" and record.port and record.host:
            verdict = await_health(record.host, record.port,
                                   lambda: proc.exit_status() is None, ctx.adopt_timeout)
        if verdict == "gone":
            return f"llama-server pid {proc.pid} from state.json exited during adoption"
        if verdict in ("healthy", "listening"):
            ctx.proc = proc
            self._restore(record, state="ready")
            ctx.log_path = ctx.paths.log_file(record.model or "")
            slow = "" if verdict == "healthy" else (
                f"; /health gave no 200 within {ctx.adopt_timeout:g} s (server.adoptTimeoutMs)"
                " but it still listens on its port: adopted as busy")
            return f"adopted running llama-server for {record.model} (pid {proc.pid}){slow}"
        why = "nothing listens on its port" if verdict == "deaf" else f"it was {record.state}"
        proc.terminate(ctx.stop_grace)
        return f"stopped llama-server pid {proc.pid}: not healthy ({why})"

    def first_boot_of_daemon(self) -> bool:
        """True unless state.json was written by this very daemon (a restarted worker)."""
        data, _ = read_state(self.ctx.paths.state_file)
        daemon = data.get("daemon") if data else None
        info = self.ctx.daemon_info
        return not (isinstance(daemon, dict) and daemon.get("pid") == info.get("pid")
                    and daemon.get("started_at") == info.get("started_at"))

    def _restore(self, record: Backend, state: str) -> None:
        """The record of a process an earlier worker started (not a transition: the process
        is already in that state)."""
        restored = Backend.from_dict(record.to_dict())
        restored.state, restored.error, restored.progress = state, None, None
        restored.generation = self.ctx.backend.generation
        self.ctx.backend = restored

    def _resume_load(self, proc: BackendProcess, record: Backend) -> None:
        ctx = self.ctx
        timeout = ctx.ready_timeout
        elapsed = max(0.0, time.time() - (record.started_at or time.time()))
        path = Path(record.model_path or "")
        model = record.model or ""
        ctx.proc = proc
        ctx.log_path = ctx.paths.log_file(model)
        self.loader.load = Load(model=model, model_path=path, proc=proc,
                                log_path=ctx.log_path, log_offset=0,
                                started=time.monotonic() - elapsed,
                                deadline=time.monotonic() + max(1.0, timeout - elapsed),
                                model_size=file_size(path))
        self._restore(record, state="starting")
        ctx.backend.progress = {"phase": "loading", "percent": None}
