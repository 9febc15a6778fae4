"""llmctld with two signals for callgrind, for bench.relaycost: in the proxy worker SIGUSR1
zeroes the counters and turns instrumentation on, SIGWINCH dumps them (valgrind client
requests from a tiny C helper, $LLMCTL_CGCTL). Forked workers cannot be reached by
callgrind_control, so they are told by signal instead."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

from llmctl.daemon.processes import main as daemon_main
from llmctl.daemon.processes import proxy_worker

_run = proxy_worker.run


def _run_with_signals(*args: Any, **kwargs: Any) -> int:
    lib = ctypes.CDLL(os.environ["LLMCTL_CGCTL"])
    signal.signal(signal.SIGUSR1, lambda *_: lib.cg_start())
    signal.signal(signal.SIGWINCH, lambda *_: lib.cg_dump())
    return _run(*args, **kwargs)


proxy_worker.run = _run_with_signals  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(daemon_main.main())
