"""`llmctl worker`'s pieces that need no rpc-server running: the address rule, the binary
lookup, the command line from the options and the build's --help, what a failed start's log
means, the shared restart record's wording, and `llmctl status`'s lines about workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.cli.rpc_workers import worker_lines
from llmctl.core.restarts import BOOT_FAILURES_MAX, FatalError, RestartRecord
from llmctl.worker import rpc_server
from llmctl.worker.rpc_server import ServerOptions, WorkerSetupError

HELP = """Usage: ggml-rpc-server [options]

options:
  -h, --help                       show this help message and exit
  -t, --threads N                  number of threads for the CPU device (default: 1)
  -d, --device <dev1,dev2,...>     comma-separated list of devices
  -H, --host HOST                  host to bind to (default: 127.0.0.1)
  -p, --port PORT                  port to bind to (default: 50052)
  -c, --cache                      enable local file cache
"""


def fake_rpc_server(directory: Path, name: str = "ggml-rpc-server", help_text: str = HELP
                    ) -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{help_text}EOF\n")
    path.chmod(0o755)
    return path


def test_beyond_loopback_is_refused_with_the_reason_and_the_ways_round() -> None:
    assert rpc_server.listen_address("localhost", 50052, False) == "127.0.0.1"
    assert rpc_server.listen_address("127.0.0.2", 50052, False) == "127.0.0.2"
    with pytest.raises(WorkerSetupError) as e:
        rpc_server.listen_address("0.0.0.0", 50052, False)
    text = str(e.value)
    assert "refusing to listen on 0.0.0.0: rpc-server has no authentication" in text
    assert "can run code on this machine's devices and read their memory" in text
    assert "ssh -N -L 50052:127.0.0.1:50052 <this host>" in text
    assert "--allow-network" in text
    assert rpc_server.listen_address("0.0.0.0", 50052, True) == "0.0.0.0"
    for host, why in (("::1", "IPv4 only"), ("gpu-box", "not an IPv4 address")):
        with pytest.raises(WorkerSetupError, match=why):
            rpc_server.listen_address(host, 50052, True)


def test_the_binary_is_found_beside_llama_server_then_on_path(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    beside, on_path = tmp_path / "llama", tmp_path / "path"
    beside.mkdir()
    on_path.mkdir()
    (beside / "llama-server").write_text("")
    old_name = fake_rpc_server(beside, "rpc-server")  # an older tree's name is accepted
    monkeypatch.setenv("PATH", str(on_path))
    assert rpc_server.find_binary(None, str(beside / "llama-server")) == old_name
    newer = fake_rpc_server(on_path)
    assert rpc_server.find_binary(None, "llama-server") == newer
    assert rpc_server.find_binary(str(old_name), None) == old_name
    newer.unlink()
    nixpkgs = fake_rpc_server(on_path, "llama-rpc-server")  # what nixpkgs installs
    assert rpc_server.find_binary(None, "llama-server") == nixpkgs
    with pytest.raises(WorkerSetupError, match="is not an executable file"):
        rpc_server.find_binary(str(tmp_path / "nope"), None)


def test_no_binary_anywhere_says_how_to_get_one(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(rpc_server, "_places", lambda configured: [tmp_path])
    with pytest.raises(WorkerSetupError) as e:
        rpc_server.find_binary(None, None)
    assert "no rpc-server (ggml-rpc-server, rpc-server or llama-rpc-server) found" in \
        str(e.value)
    assert "CMAKE_ARGS=-DGGML_RPC=ON pip install --no-cache-dir" in str(e.value)


def test_the_command_line_uses_what_the_build_offers(tmp_path: Path) -> None:
    binary = fake_rpc_server(tmp_path)
    flags = rpc_server.flags_of(binary)
    options = ServerOptions(port=50060, threads=4, devices=("CUDA0", "CUDA1"), cache=True)
    assert rpc_server.build_argv(binary, flags, options) == [
        str(binary), "--host", "127.0.0.1", "--port", "50060", "--threads", "4",
        "--device", "CUDA0,CUDA1", "--cache"]
    old = fake_rpc_server(tmp_path, "old", HELP.replace("  -d, --device", "  -x, --xx")
                          .replace("  -c, --cache", "  -y, --yy"))
    with pytest.raises(WorkerSetupError, match="has no --device option"):
        rpc_server.build_argv(old, rpc_server.flags_of(old), options)
    env = rpc_server.environment(ServerOptions(cache=True, cache_dir=tmp_path / "c"))
    assert env["LLAMA_CACHE"] == str(tmp_path / "c")


def test_a_program_that_is_not_rpc_server_is_refused(tmp_path: Path) -> None:
    other = fake_rpc_server(tmp_path, "other", "usage: other [-v]\n")
    with pytest.raises(WorkerSetupError, match="does not look like rpc-server"):
        rpc_server.flags_of(other)


def test_a_failed_start_is_explained_from_the_log() -> None:
    log = Path("/run/worker.log")
    taken = rpc_server.diagnose(["Failed to create server socket"], "127.0.0.1:50052", log)
    assert taken is not None and "could not listen on 127.0.0.1:50052" in taken
    device = rpc_server.diagnose(["error: unknown device: CUDA7", "available devices:"],
                                 "127.0.0.1:50052", log)
    assert device is not None and "error: unknown device: CUDA7" in device
    assert rpc_server.diagnose(["something else"], "127.0.0.1:50052", log) is None


def test_the_shared_restart_record_names_the_child_when_it_gives_up() -> None:
    record = RestartRecord(label="rpc-server")
    for n in range(BOOT_FAILURES_MAX - 1):
        record.last_error = "it could not listen"
        record.schedule_restart(0, now=float(n))  # exit 0 before ready: still a failed boot
    record.last_error = "it could not listen"
    with pytest.raises(FatalError, match="^rpc-server keeps failing before it is ready "
                       r"\(it could not listen; 3 times in a row\); giving up"):
        record.schedule_restart(0, now=5.0)


def test_status_lines_for_workers() -> None:
    assert worker_lines([]) == []
    lines = worker_lines([
        {"name": "gpu-a", "address": "10.0.0.2:50052", "state": "up", "since": None,
         "in_use": "big", "devices": [{"free": 3 * 2**30, "total": 8 * 2**30}]},
        {"name": "b", "address": "10.0.0.3:50052", "state": "down", "since": None,
         "error": "connection refused (nothing listens there)"}])
    assert lines == [
        "workers  gpu-a  10.0.0.2:50052  up (serving big; 1 device, 3072 MiB free)",
        "         b      10.0.0.3:50052  DOWN: connection refused (nothing listens there)"]
