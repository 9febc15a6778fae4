"""The proxy's gate without a daemon: leases own the in-flight count (no path leaks one), the
busy rule, and the one Ensure that concurrent requests share. The lifecycle worker is played
through the other end of a real socketpair."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

from llmctl.core.config import load_global
from llmctl.core.paths import Paths
from llmctl.core.state import Backend
from llmctl.daemon.admission import gate as gate_module
from llmctl.daemon.api.hub import Hub
from llmctl.daemon.ipc import protocol as p
from llmctl.daemon.ipc.channel import Channel, channel_pair


class FakeRelay:
    def __init__(self) -> None:
        self.aborted = self.closed = False
        self.lease: gate_module.Lease | None = None

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True
        if self.lease is not None:
            self.lease.release()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[Hub, Channel]]:
    ours, theirs = channel_pair()
    theirs.settimeout(2)
    paths = Paths(home=tmp_path, runtime=tmp_path)
    hub = Hub(Channel(ours), paths, {"host": "127.0.0.1", "port": 16384, "pid": 1},
              load_global(paths.config_file))
    hub.backend.apply(ready())
    yield hub, Channel(theirs)
    hub.channel.close()
    theirs.close()


def ready() -> dict:
    record = Backend(state="ready", model="m", host="127.0.0.1", port=9, generation=1)
    return record.to_dict()


def test_lease_counts_one_request_and_releases_at_the_end_of_the_block(hub) -> None:
    h, _ = hub
    with h.gate.acquire() as lease:
        assert lease.address == ("127.0.0.1", 9)
        assert h.gate.in_flight == 1
    assert h.gate.in_flight == 0
    assert h.gate.requests_total == 1


def test_exception_inside_a_lease_releases_it(hub) -> None:
    h, _ = hub
    with pytest.raises(RuntimeError):
        with h.gate.acquire():
            raise RuntimeError("the upstream exploded")
    assert h.gate.in_flight == 0


def test_relay_takes_the_lease_over_until_it_closes(hub) -> None:
    h, _ = hub
    relay = FakeRelay()
    with h.gate.acquire() as lease:
        lease.hand_to(relay)
        relay.lease = lease
    assert h.gate.in_flight == 1  # the response is still being relayed
    relay.close()
    relay.close()  # releasing twice counts once
    assert h.gate.in_flight == 0


def test_exception_after_the_hand_over_closes_the_relay(hub) -> None:
    h, _ = hub
    relay = FakeRelay()
    with pytest.raises(ValueError):
        with h.gate.acquire() as lease:
            lease.hand_to(relay)
            relay.lease = lease
            raise ValueError("start_response failed")
    assert relay.closed and h.gate.in_flight == 0


def test_busy_rule_and_force(hub, monkeypatch: pytest.MonkeyPatch) -> None:
    h, lifecycle = hub
    monkeypatch.setattr(gate_module, "BUSY_GRACE", 0.05)
    relay = FakeRelay()
    lease = h.gate.acquire()
    lease.hand_to(relay)
    with pytest.raises(gate_module.Busy, match="1 request is in flight"):
        h.gate.begin(p.Stop, force=False)
    pending = h.gate.begin(p.Stop, force=True)
    assert relay.aborted
    [sent] = lifecycle.messages()
    assert sent == p.Stop(pending.id, force=True)  # the lifecycle skips the KV save
    assert h.gate.gating == {pending.id}


def test_requests_wait_while_a_switch_is_accepted(hub) -> None:
    h, lifecycle = hub
    pending = h.gate.begin(p.Switch, force=False, model="n")
    waiter = gevent.spawn(h.gate.acquire)
    gevent.sleep(0.05)
    assert not waiter.ready()  # gated
    h.backend.apply(Backend(state="ready", model="n", host="127.0.0.1", port=10,
                            generation=2).to_dict())
    h.commands.deliver(p.Reply(pending.id, True, {"model": "n"}))
    lease = waiter.get(timeout=2)
    assert lease.address == ("127.0.0.1", 10) and h.gate.gating == set()


def test_nothing_loaded_asks_once_and_every_waiter_gets_the_error(hub) -> None:
    h, lifecycle = hub
    h.backend.apply(Backend(state="failed", generation=2).to_dict())
    waiters = [gevent.spawn(h.gate.acquire) for _ in range(3)]
    gevent.sleep(0.05)
    [ensure] = lifecycle.messages()
    assert isinstance(ensure, p.Ensure)  # one question for three requests
    h.commands.deliver(p.Reply(ensure.id, False, {"model": "dflt"},
                               {"code": "load_failed", "message": "it broke"}))
    gevent.joinall(waiters, timeout=2)
    for waiter in waiters:
        assert isinstance(waiter.exception, gate_module.Unavailable)
        assert waiter.exception.code == "default_model_failed"
        assert "loading the default model dflt failed: it broke" in waiter.exception.message
    assert h.gate.in_flight == 0


def test_no_default_model_is_a_503_no_model(hub) -> None:
    h, lifecycle = hub
    h.backend.apply(Backend(state="stopped", generation=2).to_dict())
    waiter = gevent.spawn(h.gate.acquire)
    gevent.sleep(0.05)
    [ensure] = lifecycle.messages()
    h.commands.deliver(p.error_reply(ensure.id, "no_model", "no model is loaded. Run ..."))
    waiter.join(2)
    assert isinstance(waiter.exception, gate_module.Unavailable)
    assert (waiter.exception.status, waiter.exception.code) == (503, "no_model")


def test_a_command_refused_at_once_does_not_gate(hub) -> None:
    h, lifecycle = hub
    lifecycle.close()
    h.channel.close()  # sending fails: the reply is synthetic and immediate
    pending = h.gate.begin(p.Stop, force=False)
    assert pending.reply().error["code"] == "unavailable"  # type: ignore[index]
    assert h.gate.gating == set()
