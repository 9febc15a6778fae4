"""daemon.backend.process: when a process we did not start (an adopted or orphaned llama-server)
counts as gone. Its main thread turning zombie is not enough: until its last thread has
exited, its files, the listening socket among them, are still open, and a launch on its port
would be refused as port_in_use (seen in CI after an orphan was stopped on a loaded machine)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from llmctl.daemon.backend.process import BackendProcess

from harness import wait_for

# A server whose main thread ends on SIGTERM while another thread keeps the socket open until
# it is told to finish (a line on stdin): the state an exiting multi-threaded process is in.
LINGERING = """
import ctypes, os, signal, socket, sys, threading
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
def linger():
    sys.stdin.readline()
    os._exit(0)
threading.Thread(target=linger).start()
signal.signal(signal.SIGTERM, lambda *_: ctypes.CDLL(None).pthread_exit(None))
print(s.getsockname()[1], flush=True)
threading.Event().wait()
"""


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_process_is_not_gone_while_a_thread_still_holds_its_socket(tmp_path: Path) -> None:
    script = tmp_path / "lingering.py"
    script.write_text(LINGERING)
    child = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())
        info = psutil.Process(child.pid)
        # watched as llmctld watches what it adopts: by pid, not as its parent
        proc = BackendProcess(child.pid, info.create_time(), info.cmdline())
        child.send_signal(signal.SIGTERM)
        wait_for(lambda: info.status() == psutil.STATUS_ZOMBIE, 10, "the main thread to end")
        assert listening(port)  # the other thread still holds it
        assert proc.exit_status() is None
        child.stdin.write("done\n")
        child.stdin.flush()
        wait_for(lambda: proc.exit_status() is not None, 10, "the whole process to end")
        assert not listening(port)
        assert proc.exit_status() == -255  # not ours to collect
    finally:
        child.kill()
        child.wait(10)
