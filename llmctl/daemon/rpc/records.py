"""One RPC worker's health as llmctld last saw it, in the form every view shows, and the one
wording of why a model cannot load while a worker it needs is not there.

States: `unchecked` (not looked at yet), `up` (it answered the RPC hello, or our own
llama-server holds a live connection to it: `in_use` names that model), `busy` (it accepted a
connection but serves another client: rpc-server serves one at a time), `down`. `since` is
when it last went from usable to not or back (wall clock); `checked_at` the last look.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llmctl.core.config import model_workers

STATES = ("unchecked", "up", "busy", "down")


@dataclass
class WorkerHealth:
    name: str
    address: str  # host:port, as configured
    state: str = "unchecked"
    error: str | None = None
    since: float | None = None
    checked_at: float | None = None
    version: str | None = None  # its RPC protocol
    devices: list[dict[str, int]] = field(default_factory=list)  # [{"free", "total"}] bytes
    in_use: str | None = None  # the model whose llama-server holds it

    @property
    def up(self) -> bool:
        return self.state == "up"

    def public(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "up": self.up}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerHealth:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def refusal(model: str, cfg: dict[str, Any], health: dict[str, WorkerHealth],
            ) -> str | None:
    """Why `model` (its merged config) cannot load now, or None: the first worker it needs
    that was last seen busy or down. An unchecked one is not a reason (the load will tell)."""
    try:
        needed = model_workers(cfg)
    except ValueError as e:
        return f"{model}: llama.workers {e}"
    for name, address in needed:
        found = health.get(name)
        if found is None or found.address != address or found.state in ("up", "unchecked"):
            continue
        what = "is busy" if found.state == "busy" else "is down"
        hint = ("stop the other client, or give this model another worker" if
                found.state == "busy" else f"start it (`llmctl worker` on that host) or "
                f"remove {name} from {model}'s llama.workers")
        return f"{model} needs RPC worker {name} ({address}), which {what}: {found.error}; {hint}"
    return None
