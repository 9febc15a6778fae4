"""daemon.backend.lifecycle.Lifecycle's command handling without a llama-server: the dispatch table,
protocol errors answered, and the Ensure rules (who loads the default model, and when a failed
one is tried again)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmctl.core.paths import Paths
from llmctl.core.state import IllegalTransition
from llmctl.daemon.backend import catalog
from llmctl.daemon.backend import context as context_module
from llmctl.daemon.backend.context import DefaultFailure
from llmctl.daemon.backend.lifecycle import Lifecycle
from llmctl.daemon.ipc import protocol as p


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(home=tmp_path, runtime=tmp_path)


def lifecycle(paths: Paths, **daemon: object) -> tuple[Lifecycle, list[p.Message]]:
    (paths.home / "config").mkdir(exist_ok=True)
    paths.config_file.write_text(yaml.safe_dump({"daemon": daemon}))
    sent: list[p.Message] = []
    return Lifecycle(paths, sent.append, {"pid": 1}), sent


def replies(sent: list[p.Message]) -> list[p.Reply]:
    return [m for m in sent if isinstance(m, p.Reply)]


def test_status_replies_with_the_record(paths: Paths) -> None:
    lc, sent = lifecycle(paths)
    lc.handle(p.Status("s"))
    [reply] = replies(sent)
    assert reply.ok and reply.data["backend"]["state"] == "stopped"


def test_protocol_errors_are_answered_not_raised(paths: Paths) -> None:
    lc, sent = lifecycle(paths)
    lc.handle(p.decode({"type": "switch", "id": "x"}))  # no model
    lc.handle(p.Reload("r"))  # a supervisor command, sent to the wrong process
    assert [(r.id, (r.error or {})["code"]) for r in replies(sent)] == [
        ("x", "bad_message"), ("r", "bad_message")]


def test_stop_with_nothing_running(paths: Paths) -> None:
    lc, sent = lifecycle(paths)
    lc.handle(p.Stop("s"))
    assert replies(sent) == [p.Reply("s", True, {"stopped": None})]


def test_ensure_without_a_default_model_says_what_to_do(paths: Paths) -> None:
    lc, sent = lifecycle(paths)
    lc.handle(p.Ensure("e"))
    [reply] = replies(sent)
    assert reply.error and reply.error["code"] == "no_model"
    assert "llmctl switch" in reply.error["message"]


def test_ensure_of_an_unknown_default_is_remembered(paths: Paths) -> None:
    lc, sent = lifecycle(paths, default_model="ghost")
    lc.handle(p.Ensure("e1"))
    assert replies(sent)[0].error["code"] == "not_found"  # type: ignore[index]
    assert lc.ctx.default_failure is not None and lc.ctx.default_failure.model == "ghost"
    lc.handle(p.Ensure("e2"))  # refused at once, from memory
    second = replies(sent)[1]
    assert second.error and second.error["code"] == "default_model_failed"
    assert "ghost" in second.error["message"]


def test_a_failed_default_is_retried_after_an_edit_or_the_backoff(
        paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    lc, sent = lifecycle(paths, default_model="ghost")
    lc.ctx.default_failure = DefaultFailure("ghost", catalog.signature(paths, "ghost"), retry_at=1e18,
                                        message="it broke")
    lc.handle(p.Ensure("e1"))
    assert replies(sent)[-1].error["code"] == "default_model_failed"  # type: ignore[index]
    paths.config_file.write_text(paths.config_file.read_text() + "\n# edited\n")
    lc.handle(p.Ensure("e2"))  # the config changed: a new attempt (which fails: no model)
    assert replies(sent)[-1].error["code"] == "not_found"  # type: ignore[index]
    monkeypatch.setattr(context_module.time, "monotonic", lambda: 2e18)
    lc.handle(p.Ensure("e3"))  # the backoff passed: another attempt
    assert replies(sent)[-1].error["code"] == "not_found"  # type: ignore[index]


def test_explicit_switch_and_reload_forget_the_failure(paths: Paths) -> None:
    lc, _ = lifecycle(paths, default_model="ghost")
    lc.ctx.default_failure = DefaultFailure("ghost", (), retry_at=1e18, message="x")
    lc.handle(p.Switch("s", "other"))
    assert lc.ctx.default_failure is None
    lc.ctx.default_failure = DefaultFailure("ghost", (), retry_at=1e18, message="x")
    lc.handle(p.ReloadConfig())
    assert lc.ctx.default_failure is None


def test_the_record_refuses_an_illegal_move_made_by_mistake(paths: Paths) -> None:
    lc, _ = lifecycle(paths)
    with pytest.raises(IllegalTransition):
        lc.ctx.backend.transition("ready")  # stopped -> ready skips the load


def test_stop_of_a_load_whose_process_already_exited(paths: Paths) -> None:
    from llmctl.daemon.backend.phases import Load
    from llmctl.daemon.backend.process import BackendProcess

    lc, sent = lifecycle(paths)
    proc = BackendProcess(999_999, 0.0, ["llama-server"])
    proc._gone, proc._exit_code = True, 1  # exited; the loop has not noticed yet
    lc.ctx.proc = proc
    lc.loader.load = Load(model="m", model_path=paths.home / "m.gguf", proc=proc,
                   log_path=paths.home / "m.log", log_offset=0, started=0.0, deadline=1e18,
                   waiters=["switch"])
    lc.ctx.backend.transition("starting", model="m", pid=proc.pid)
    lc.handle(p.Stop("s"))
    assert lc.ctx.backend.state == "stopped" and lc.loader.load is None and lc.stopper.stopping is None
    answers = {r.id: r for r in replies(sent)}
    assert answers["s"] == p.Reply("s", True, {"stopped": "m"})
    assert answers["switch"].error and answers["switch"].error["code"] == "cancelled"
