"""The records of the two phases the lifecycle loop ticks through, a load and a stop, and of
what waits on them. Plain data: loading.py and stopping.py move them along."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.daemon.backend.process import BackendProcess, Termination
from llmctl.daemon.backend.stall import StallDetector
from llmctl.daemon.kvcache.continuity import KvPlan
from llmctl.daemon.kvcache.transfer import Job


@dataclass
class Load:
    """A llama-server being started, until /health answers 200 (or the load fails)."""

    model: str
    model_path: Path
    proc: BackendProcess
    log_path: Path
    log_offset: int
    started: float  # monotonic
    deadline: float  # monotonic
    waiters: list[str] = field(default_factory=list)
    model_size: int = 0
    reads_file: bool = True
    last_progress: float = 0.0
    phase: str = "spawning"
    percent: float | None = None
    default: bool = False  # started by an Ensure
    pin: bool = False
    stall: StallDetector = field(default_factory=lambda: StallDetector(0.0))
    kv: KvPlan | None = None
    restore: Job | None = None  # restoring the saved KV cache: /health answered already


@dataclass
class Plan:
    """A switch ready to start once the running backend has stopped."""

    model: str
    cfg: dict[str, Any]
    model_path: Path
    argv: list[str]
    waiters: list[str]
    default: bool = False
    pin: bool = False
    kv: KvPlan | None = None


@dataclass
class Failure:
    """What a stop that ends a failed load records and answers."""

    code: str
    message: str
    model: str
    waiters: list[str]
    tail: list[str] | None
    default: bool


@dataclass
class Stopping:
    """A llama-server being stopped, and what its end answers or starts. While its KV cache
    is saved (`save`) no signal has been sent yet (`termination` is None)."""

    termination: Termination | None
    model: str | None
    waiters: list[str] = field(default_factory=list)  # Stop commands, answered when done
    cancelled: list[tuple[list[str], str]] = field(default_factory=list)  # (rids, why)
    failure: Failure | None = None
    then: Plan | None = None
    unloaded: dict[str, Any] | None = None  # an idle unload: recorded once it is stopped
    save: Job | None = None
    kv: dict[str, Any] | None = None  # what the save did, for the stopped record
