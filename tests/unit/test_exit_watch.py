"""The lifecycle worker's ExitWatch: its selector wakes when the watched process exits."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys

import pytest

from llmctl.daemon.processes.lifecycle_worker import ExitWatch


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfds are Linux-only")
def test_the_selector_wakes_when_the_watched_process_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    selector = selectors.DefaultSelector()
    watch = ExitWatch(selector)
    try:
        watch.watch(proc.pid)
        assert not watch.seen(selector.select(0))  # running: nothing to see
        assert proc.stdin is not None
        proc.stdin.close()  # it exits
        ready = selector.select(30)
        assert watch.seen(ready)
        assert not selector.get_map()  # the fired pidfd is dropped (it stays readable)
        watch.watch(proc.pid)  # the same pid is not watched again
        assert not selector.get_map()
        watch.watch(None)
        assert watch.pid is None
    finally:
        proc.wait(30)
        selector.close()
