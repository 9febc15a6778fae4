"""The proxy's scheduler without a daemon: which command goes to the lifecycle worker, and
when, for routed requests and idle unloads. The lifecycle worker is played through the other
end of a real socketpair, as in test_gate.py."""

from __future__ import annotations

import select
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import yaml

from llmctl.core.config import load_global
from llmctl.core.paths import Paths
from llmctl.core.state import Backend
from llmctl.daemon.admission.gate import Unavailable
from llmctl.daemon.admission.idle import PIN
from llmctl.daemon.api.hub import Hub
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.channel import Channel, channel_pair


def make_hub(tmp_path: Path, daemon: dict) -> tuple[Hub, Channel]:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "default.yaml").write_text(yaml.safe_dump({"daemon": daemon}))
    for model in ("a", "b"):
        d = tmp_path / "gguf" / model
        d.mkdir(parents=True, exist_ok=True)
        (d / "m.gguf").write_bytes(b"GGUF")
        (d / "config.yaml").write_text(f"id: {model}\nmodel_file: m.gguf\naliases: [{model}-x]\n")
    ours, theirs = channel_pair()
    theirs.settimeout(2)
    paths = Paths(home=tmp_path, runtime=tmp_path)
    hub = Hub(Channel(ours), paths, {"host": "127.0.0.1", "port": 16384, "pid": 1},
              load_global(paths.config_file))
    return hub, Channel(theirs)


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[tuple[Hub, Channel]]:
    hub, lifecycle = make_hub(tmp_path, {"route_by_model": True})
    hub.backend.apply(ready("a", 9, 1))
    yield hub, lifecycle
    hub.channel.close()


def ready(model: str, port: int, generation: int) -> dict:
    return Backend(state="ready", model=model, host="127.0.0.1", port=port,
                   generation=generation).to_dict()


def settle() -> None:
    gevent.sleep(0.05)  # let the spawned greenlets run (no other process is involved)


def nothing_sent(lifecycle: Channel) -> bool:
    readable, _, _ = select.select([lifecycle.fileno()], [], [], 0.05)
    return not readable


def test_a_routed_request_switches_only_once_the_lease_on_the_current_model_ends(
        routed) -> None:
    hub, lifecycle = routed
    lease_a = hub.gate.acquire("a")
    assert lease_a.model == "a" and lease_a.address == ("127.0.0.1", 9)
    waiter = gevent.spawn(hub.gate.acquire, "b-x")  # an alias of b
    settle()
    assert not waiter.ready()
    lease_a.release()
    settle()
    [switch] = lifecycle.messages()
    assert isinstance(switch, p.Switch) and switch.model == "b" and not switch.pin
    hub.backend.apply(ready("b", 10, 2))
    hub.commands.deliver(p.Reply(switch.id, True, {"model": "b"}))
    lease_b = waiter.get(timeout=2)
    assert (lease_b.model, lease_b.address) == ("b", ("127.0.0.1", 10))


def test_an_unknown_name_is_a_404_listing_the_ids(routed) -> None:
    hub, lifecycle = routed
    with pytest.raises(Unavailable) as info:
        hub.gate.acquire("gpt-5")
    assert (info.value.status, info.value.code, info.value.type) == (
        404, "model_not_found", "invalid_request_error")
    assert "one of: a, b" in info.value.message
    assert hub.gate.acquire("local").model == "a"


def test_without_routing_every_name_is_the_current_model(tmp_path: Path) -> None:
    hub, lifecycle = make_hub(tmp_path, {})
    hub.backend.apply(ready("a", 9, 1))
    assert hub.gate.acquire("b").model == "a"
    assert hub.gate.acquire("gpt-5").model == "a"
    assert nothing_sent(lifecycle)


def test_idle_unload_waits_for_the_last_lease_and_says_how_long_it_was_idle(
        tmp_path: Path) -> None:
    hub, lifecycle = make_hub(tmp_path, {"idle_unload": "200ms"})
    hub.backend.apply(ready("a", 9, 1))
    hub.gate.scheduler.start()
    lease = hub.gate.acquire()
    gevent.sleep(0.5)  # more than the timeout, with a request in flight: no unload
    assert nothing_sent(lifecycle)
    lease.release()
    gevent.sleep(0.4)
    [stop] = lifecycle.messages()
    assert stop == p.Stop(stop.id, idle_seconds=0.2)


def test_a_keep_alive_of_zero_unloads_when_the_request_ends(tmp_path: Path) -> None:
    hub, lifecycle = make_hub(tmp_path, {})  # no idle_unload configured
    hub.backend.apply(ready("a", 9, 1))
    hub.gate.scheduler.start()
    lease = hub.gate.acquire()
    lease.keep_alive = 0.0
    lease.release()
    settle()
    [stop] = lifecycle.messages()
    assert isinstance(stop, p.Stop) and stop.idle_seconds == 0.0


def test_a_pinning_keep_alive_beats_the_configured_timeout(tmp_path: Path) -> None:
    hub, lifecycle = make_hub(tmp_path, {"idle_unload": "100ms"})
    hub.backend.apply(ready("a", 9, 1))
    hub.gate.scheduler.start()
    lease = hub.gate.acquire()
    lease.keep_alive = PIN
    lease.release()
    gevent.sleep(0.4)  # four timeouts
    assert nothing_sent(lifecycle)
    assert hub.gate.scheduler.status()["idle_unload_s"] is None
