"""How a process ended, in words: one wording for the daemon log, the API, the CLI and
`llmctl worker`."""

from __future__ import annotations

import signal

ADOPTED_UNKNOWN = -255  # exit status of an adopted process: not our child, not collectable


def describe_exit(code: int | None) -> str:
    """`code` as subprocess and os.waitstatus_to_exitcode give it: negative for a signal."""
    if code is None:
        return "did not exit"
    if code == ADOPTED_UNKNOWN:
        return "exited (status unknown: it was adopted from an earlier worker)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
