"""The llmctl CLI run as a subprocess against a running daemon: output and exit codes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import threading

from harness import ROOT, Daemon, Home, wait_for

EXIT_NOT_RUNNING, EXIT_NOT_FOUND, EXIT_AMBIGUOUS, EXIT_BUSY = 3, 4, 5, 6
EXIT_LOAD_FAILED, EXIT_UNAVAILABLE = 7, 8


def test_daemon_not_running_says_how_to_start_it(home: Home, ports) -> None:
    env = {**home.env, "LLMCTL_PORT": str(ports.take())}
    for args in (["status"], ["switch", "x"], ["models"]):
        r = subprocess.run([str(ROOT / "bin" / "llmctl"), *args], env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == EXIT_NOT_RUNNING, r
        assert "llmctld is not running" in r.stderr and "start it with `llmctld`" in r.stderr


def test_switch_status_active_stop(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("tiny-alpha", script={"load_seconds": 0.3})
    fake_home.add_model("tiny-beta")
    fake_home.write_config(daemon={"default_model": "tiny-beta"})
    daemon = make_daemon()

    r = daemon.cli("active")
    assert r.returncode == 1 and r.stdout == ""

    r = daemon.cli("switch", "alpha")
    assert r.returncode == 0, r.stderr
    assert "'alpha' → tiny-alpha" in r.stderr and "starting tiny-alpha" in r.stderr
    assert "tiny-alpha ready in" in r.stdout

    r = daemon.cli("status")
    assert r.returncode == 0
    assert "tiny-alpha  ready" in r.stdout and "default  tiny-beta" in r.stdout
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["backend"]["model"] == "tiny-alpha" and status["in_flight"] == 0

    assert daemon.cli("active").stdout.strip() == "tiny-alpha"
    assert json.loads(daemon.cli("active", "--json").stdout)["state"] == "ready"

    r = daemon.cli("serve", "tiny-alpha")
    assert r.returncode == 0 and "already active" in r.stdout

    r = daemon.cli("stop")
    assert r.returncode == 0 and r.stdout.strip() == "stopped tiny-alpha"
    assert daemon.cli("stop").stdout.strip() == "no model was running"


def test_models_and_inspect(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("tiny-alpha")
    fake_home.add_model("tiny-beta", llama={"ctx_size": 4096})
    bad = fake_home.models_dir / "broken"
    bad.mkdir()
    (bad / "config.yaml").write_text("id: broken\nmodel_file: model.gguf\nllama:\n  ctx_size: x\n")
    fake_home.write_config(daemon={"default_model": "tiny-beta"})
    daemon = make_daemon()

    r = daemon.cli("models")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "SIZE", "MEMORY", "PARAMS", "QUANT", "CTX",
                                "SOURCE"]
    assert any(ln.startswith(" d") and "tiny-beta" in ln for ln in lines)
    assert any("! broken:" in ln and "config.yaml:4: llama.ctx_size" in ln for ln in lines)
    data = json.loads(daemon.cli("models", "--json").stdout)
    assert {m["id"]: m["available"] for m in data["models"]} == {
        "broken": False, "tiny-alpha": True, "tiny-beta": True}

    r = daemon.cli("inspect", "beta")
    assert r.returncode == 0
    assert "tiny-beta" in r.stdout and "ctx_size: 4096" in r.stdout
    assert json.loads(daemon.cli("inspect", "tiny-beta", "--json").stdout)["config"]["llama"][
        "ctx_size"] == 4096

    # the broken model is named as `llmctl models` lists it: both commands say what is wrong
    r = daemon.cli("switch", "broken")
    assert r.returncode == 8 and "config.yaml:4: llama.ctx_size" in r.stderr
    r = daemon.cli("inspect", "broken")
    assert r.returncode == 0 and "config.yaml:4: llama.ctx_size" in r.stdout
    assert "file     -" in r.stdout  # its model file is unknown, not the string "None"
    r = daemon.cli("inspect", "zzz")
    assert r.returncode == 4 and "run `llmctl models`" in r.stderr
    r = daemon.cli("logs", "tiny-gamma")  # no such model: said so, not "not started yet"
    assert r.returncode == 4 and "no model with id 'tiny-gamma'" in r.stderr
    assert "not been started" in daemon.cli("logs", "tiny-alpha").stderr
    assert daemon.cli("inspect", "nothing-like-it").returncode == EXIT_NOT_FOUND
    assert daemon.cli("inspect", "tiny").returncode == EXIT_AMBIGUOUS


def test_inspect_shows_where_the_daemon_really_listens(fake_home: Home, make_daemon,
                                                      ports) -> None:
    """LLMCTL_HOST/LLMCTL_PORT beat daemon.host/daemon.port: inspect shows what is in force."""
    file_port, env_port = ports.take(), ports.take()
    fake_home.add_model("tiny-alpha")
    fake_home.write_config(daemon={"host": "localhost", "port": file_port})
    fake_home.extra_env.update(LLMCTL_HOST="127.0.0.1", LLMCTL_PORT=str(env_port))
    daemon = make_daemon(port_arg=False)
    assert daemon.port == env_port

    config = json.loads(daemon.cli("inspect", "tiny-alpha", "--json").stdout)["config"]
    assert (config["daemon"]["host"], config["daemon"]["port"]) == ("127.0.0.1", env_port)
    text = daemon.cli("inspect", "tiny-alpha").stdout
    daemon_section = text[text.index("\n  daemon:"):]
    assert f"port: {env_port}" in daemon_section and f"port: {file_port}" not in text


def test_exit_codes_for_failures(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("tiny-alpha", script={"chunk_interval": 0.05})
    fake_home.add_model("tiny-beta")
    fake_home.add_model("doomed", script={"exit_during_load": {"after": 0.1, "code": 2}})
    fake_home.add_model("nofile")
    (fake_home.models_dir / "nofile" / "model.gguf").unlink()
    daemon = make_daemon()

    r = daemon.cli("switch", "zzzz-qqqq")
    assert r.returncode == EXIT_NOT_FOUND and "no model matches" in r.stderr
    r = daemon.cli("switch", "tiny")
    assert r.returncode == EXIT_AMBIGUOUS
    assert "tiny-alpha" in r.stderr and "tiny-beta" in r.stderr
    r = daemon.cli("switch", "doomed")
    assert r.returncode == EXIT_LOAD_FAILED
    assert "exited with code 2" in r.stderr and "| " in r.stderr  # the log tail
    r = daemon.cli("switch", "nofile")
    assert r.returncode == EXIT_UNAVAILABLE and "does not exist" in r.stderr
    r = daemon.cli("switch", "--json", "zzzz-qqqq")
    assert json.loads(r.stdout)["error"]["code"] == "not_found"

    assert daemon.cli("switch", "tiny-alpha").returncode == 0
    stream = daemon.post("/v1/chat/completions", stream=True, json={
        "messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 100})
    lines = stream.iter_lines()
    next(lines)
    r = daemon.cli("switch", "tiny-beta")
    assert r.returncode == EXIT_BUSY and "1 request is in flight" in r.stderr
    r = daemon.cli("stop")
    assert r.returncode == EXIT_BUSY
    stream.close()
    wait_for(lambda: daemon.status()["in_flight"] == 0, 10, "stream to end")
    assert daemon.cli("switch", "tiny-beta").returncode == 0


def test_logs_and_follow(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("tiny-alpha")
    daemon = make_daemon()
    r = daemon.cli("logs")
    assert r.returncode == EXIT_NOT_FOUND and "no model is active" in r.stderr
    daemon.cli("switch", "tiny-alpha")
    r = daemon.cli("logs", "-n", "3")
    assert r.returncode == 0 and 1 <= len(r.stdout.splitlines()) <= 3

    follower = subprocess.Popen([str(ROOT / "bin" / "llmctl"), "logs", "-f",
                                 "-n", "1"], env=daemon.env, stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follower.stdout or []), daemon=True)
    reader.start()
    try:
        daemon.post("/v1/chat/completions", json={"messages": [{"role": "user",
                                                                "content": "x"}]})
        wait_for(lambda: any("chat/completions" in s for s in seen), 10, "followed log line")
    finally:
        follower.terminate()
        follower.wait(10)


def test_reload_reports_changes(fake_home: Home, make_daemon) -> None:
    daemon = make_daemon()
    assert "no models found" in daemon.cli("models").stdout
    fake_home.add_model("fresh")
    r = daemon.cli("reload")
    assert r.returncode == 0 and "added fresh" in r.stdout


def test_progress_on_a_terminal_redraws_one_line(fake_home: Home, make_daemon) -> None:
    fake_home.add_model("big", script={"load_seconds": 1.0, "read_bytes_during_load": True},
                        fake_size=32 * 1024 * 1024)
    daemon = make_daemon()
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO once the CLI has exited and the slave side is closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    r = subprocess.run([str(ROOT / "bin" / "llmctl"), "switch", "big"],
                       env=daemon.env, stdout=subprocess.PIPE, stderr=slave, timeout=60)
    os.close(slave)
    reader.join(10)
    os.close(master)
    screen = b"".join(chunks)
    assert r.returncode == 0
    text = screen.decode()
    assert "\r\x1b[2K" in text and "loading big [" in text and "%" in text
    assert b"big ready in" in r.stdout


def test_env_port_reaches_the_daemon(fake_home: Home, make_daemon) -> None:
    daemon: Daemon = make_daemon()
    env = {**fake_home.env}  # no LLMCTL_PORT: the CLI finds the port in state.json
    r = subprocess.run([str(ROOT / "bin" / "llmctl"), "status", "--json"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["daemon"]["port"] == daemon.port
