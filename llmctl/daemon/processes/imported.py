"""What a daemon process has imported once it serves: written out for the import-hygiene tests.

Test seam: with LLMCTL_TEST_MODULES_DIR=<dir>, each of llmctld's processes writes the names in
its `sys.modules` to `<dir>/<role>.txt` at the moment it is ready (the supervisor when its
proxy worker reports ready, each worker right after reporting ready itself).
tests/unit/test_startup_imports.py starts the real daemon with it and fails when a module that
start-up should not need (the dev server, the pull stack, the Ollama facade, ssl in the
supervisor...) is imported again. Without the variable this does nothing.
"""

from __future__ import annotations

import os
import sys

ENV = "LLMCTL_TEST_MODULES_DIR"


def dump(role: str) -> None:
    directory = os.environ.get(ENV)
    if not directory:
        return
    names = "\n".join(sorted(name for name, mod in list(sys.modules.items())
                             if mod is not None))
    path = os.path.join(directory, f"{role}.txt")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(names + "\n")
    os.replace(tmp, path)  # a reader never sees half a list
