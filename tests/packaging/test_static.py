"""Static checks of every service definition: shell lint and syntax, the launchd plist, the
systemd unit. A missing checker fails the test: CI installs them (see README.md here)."""

from __future__ import annotations

import os
import pathlib
import plistlib
import re

import pytest
from servicekit import CONTRIB, require_tool, run

SHEBANGS = ("#!/bin/sh", "#!/sbin/openrc-run")
# Sourced by a service script, never run: shell too, but without a shebang.
SETTINGS_FILES = [
    CONTRIB / "runit" / "llmctld" / "conf",
    CONTRIB / "runit" / "llmctl-worker" / "conf",
    CONTRIB / "s6" / "llmctld" / "conf",
    CONTRIB / "sysvinit" / "llmctld.default",
    CONTRIB / "openrc" / "llmctld.confd",
]
PLIST = CONTRIB / "launchd" / "io.github.sigilmakes.llmctld.plist"
USER_UNIT = CONTRIB / "systemd" / "llmctld.service"
WORKER_UNIT = CONTRIB / "systemd" / "llmctl-worker@.service"


def shell_scripts() -> list[pathlib.Path]:
    return sorted(
        p
        for p in CONTRIB.rglob("*")
        if p.is_file() and p.read_bytes().startswith(tuple(s.encode() for s in SHEBANGS))
    )


def test_every_service_script_is_found() -> None:
    names = {str(p.relative_to(CONTRIB)) for p in shell_scripts()}
    assert names == {
        "freebsd/llmctld",
        "openrc/llmctld",
        "runit/llmctl-worker/log/run",
        "runit/llmctl-worker/run",
        "runit/llmctld/log/run",
        "runit/llmctld/run",
        "s6/llmctld/finish",
        "s6/llmctld/log/run",
        "s6/llmctld/run",
        "sysvinit/llmctld",
    }


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(CONTRIB)))
def test_service_script_is_executable_and_clean(script: pathlib.Path) -> None:
    assert os.access(script, os.X_OK), f"{script} must be executable"
    syntax = run("sh", "-n", str(script))
    assert syntax.returncode == 0, syntax.stderr
    lint = run(require_tool("shellcheck"), "--shell=sh", "--external-sources", str(script))
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("settings", SETTINGS_FILES, ids=lambda p: str(p.relative_to(CONTRIB)))
def test_settings_file_is_clean_shell(settings: pathlib.Path) -> None:
    lint = run(require_tool("shellcheck"), "--shell=sh", str(settings))
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_launchd_plist_runs_llmctld_with_arguments_it_accepts(llmctld_bin: pathlib.Path) -> None:
    with PLIST.open("rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == PLIST.name.removesuffix(".plist")
    program, *args = plist["ProgramArguments"]
    assert program == "@LLMCTLD@", "README.md's install command fills in the path of llmctld"
    help_text = run(str(llmctld_bin), "--help").stdout
    for flag in (a.split("=")[0] for a in args if a.startswith("-")):
        assert re.search(rf"(^|\s){re.escape(flag)}\b", help_text), f"llmctld has no {flag}"
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ExitTimeOut"] >= 30, "llmctld needs time to stop llama-server"
    assert plist["StandardErrorPath"].startswith("@HOME@/Library/Logs/")
    assert "@HOME@/.local/bin" in plist["EnvironmentVariables"]["PATH"]


def test_launchd_readme_fills_every_placeholder() -> None:
    readme = (CONTRIB / "launchd" / "README.md").read_text()
    for placeholder in set(re.findall(r"@[A-Z]+@", PLIST.read_text())):
        assert f"s|{placeholder}|" in readme, f"README.md does not fill in {placeholder}"


def test_systemd_user_unit_verifies() -> None:
    result = run(require_tool("systemd-analyze"), "verify", str(USER_UNIT))
    # verify only warns (exit 0) about unknown keys and bad values: any output is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_systemd_worker_unit_verifies_as_an_instance(tmp_path: pathlib.Path,
                                                    llmctld_bin: pathlib.Path) -> None:
    """A template: verified as the instance a user enables (the port), and its command is
    one `llmctl worker` accepts."""
    instance = tmp_path / "llmctl-worker@50052.service"
    instance.write_text(WORKER_UNIT.read_text())
    result = run(require_tool("systemd-analyze"), "verify", str(instance))
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )
    exec_start = next(ln for ln in WORKER_UNIT.read_text().splitlines()
                      if ln.startswith("ExecStart="))
    assert exec_start == ("ExecStart=/usr/bin/env llmctl worker --port %i --name %i "
                          "$LLMCTL_WORKER_ARGS")
    help_text = run(str(llmctld_bin.parent / "llmctl"), "worker", "--help").stdout
    for flag in ("--port", "--name", "--allow-network", "--host", "--device"):
        assert flag in help_text


def test_contrib_readmes_cover_every_system() -> None:
    index = (CONTRIB / "README.md").read_text()
    for system in ("openrc", "runit", "s6", "sysvinit", "freebsd", "launchd", "systemd"):
        assert (CONTRIB / system / "README.md").is_file(), f"contrib/{system}/README.md"
        assert f"({system}/README.md)" in index, f"contrib/README.md does not link {system}"
