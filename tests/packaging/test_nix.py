"""Checks of flake.nix and nix/ that need no nixpkgs: every file parses, the NixOS module
evaluates to the service we mean, and the flake's outputs are wired up.

Evaluation uses tests/packaging/nix/stub-nixpkgs: fake packages and, unless
$LLMCTL_NIXPKGS_LIB names a nixpkgs ``lib`` directory, a small stand-in for nixpkgs' lib (CI
cannot download nixpkgs). With the real lib the same checks run a second time, through the real
module system. Building the packages and the NixOS VM test (``nix flake check``) needs nixpkgs
and is not done here; see nix/README.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import sys

import pytest
from servicekit import REPO, require_tool, run

NIX_DIR = REPO / "tests" / "packaging" / "nix"
STUB_NIXPKGS = NIX_DIR / "stub-nixpkgs"
EVAL_MODULE = NIX_DIR / "eval-module.nix"
NIXPKGS_LIB = os.environ.get("LLMCTL_NIXPKGS_LIB", "")
SYSTEMS = ["x86_64-linux", "aarch64-linux", "x86_64-darwin", "aarch64-darwin"]

# The real-lib runs are only collected where a lib is named (CI counts a skip as a failure).
LIBS = ["stub", "nixpkgs"] if NIXPKGS_LIB else ["stub"]


def nix_files() -> list[pathlib.Path]:
    return [
        REPO / "flake.nix",
        *sorted((REPO / "nix").rglob("*.nix")),
        *sorted(NIX_DIR.rglob("*.nix")),
    ]


def lib_arg(lib: str) -> str:
    return "{}" if lib == "stub" else f"{{ lib = import {NIXPKGS_LIB}; }}"


@pytest.mark.parametrize("path", nix_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_nix_file_parses(path: pathlib.Path) -> None:
    result = run(require_tool("nix-instantiate"), "--parse", str(path))
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module", params=LIBS)
def module_eval(request) -> dict:
    expr = f"import {EVAL_MODULE} {lib_arg(request.param)}"
    result = run(require_tool("nix-instantiate"), "--eval", "--strict", "--json", "-E", expr)
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    assert evaluated["lib"] == request.param
    return evaluated


def test_module_disabled_defines_no_service(module_eval: dict) -> None:
    assert "service" not in module_eval["disabled"]
    assert module_eval["disabled"]["failedAssertions"] == []


def test_module_defaults(module_eval: dict) -> None:
    got = module_eval["defaults"]
    assert (got["failedAssertions"], got["warnings"]) == ([], [])
    # PATH: exactly the daemon and the backend, not NixOS's default service packages.
    assert got["path"] == ["llmctl-0.1.0", "llama-cpp"]
    assert got["packageIsWrapped"] is False
    service = got["service"]
    assert service["wantedBy"] == ["multi-user.target"]
    assert service["environment"] == {
        "LLMCTL_HOME": "/var/lib/llmctl",
        "LLMCTL_RUNTIME_HOME": "/run/llmctl",
    }
    assert got["settings"] == {"daemon": {"host": "127.0.0.1", "port": 16384}}
    assert got["variables"] == {"LLMCTL_HOST": "127.0.0.1", "LLMCTL_PORT": "16384"}
    assert got["systemPackages"] == ["llmctl-0.1.0"]
    assert got["users"]["llmctl"]["isSystemUser"] is True and got["groups"] == ["llmctl"]
    assert "/var/lib/llmctl/config/default.yaml" in got["execStartPre"]
    assert "mkdir -p /var/lib/llmctl/gguf" in got["execStartPre"]


def test_module_service_lifecycle_and_hardening(module_eval: dict) -> None:
    unit = module_eval["defaults"]["service"]["serviceConfig"]
    assert unit["ExecStart"].endswith("-llmctl-0.1.0/bin/llmctld")
    assert unit["ExecReload"].endswith("/bin/kill -HUP $MAINPID")
    assert (unit["User"], unit["Group"]) == ("llmctl", "llmctl")
    assert (unit["StateDirectory"], unit["RuntimeDirectory"]) == ("llmctl", "llmctl")
    # TERM to llmctld alone, time for it to stop llama-server, then the whole cgroup.
    assert (unit["KillMode"], unit["KillSignal"]) == ("mixed", "SIGTERM")
    assert unit["TimeoutStopSec"] >= 30
    assert unit["Restart"] == "on-failure"
    assert module_eval["defaults"]["service"]["startLimitBurst"] == 5
    for key, value in {
        "NoNewPrivileges": True,
        "ProtectSystem": "strict",
        "ProtectHome": True,
        "PrivateTmp": True,
        "PrivateDevices": False,
        "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"],
        "CapabilityBoundingSet": "",
    }.items():
        assert unit[key] == value, key
    assert {"video", "render"} <= set(unit["SupplementaryGroups"])
    assert "char-drm rw" in unit["DeviceAllow"]
    assert "MemoryDenyWriteExecute" not in unit


def test_module_options_reach_the_service(module_eval: dict) -> None:
    got = module_eval["custom"]
    assert (got["failedAssertions"], got["warnings"]) == ([], [])
    assert got["path"] == ["llmctl-0.1.0", "llama-cpp-vulkan"]
    assert got["settings"] == {
        "daemon": {"host": "127.0.0.1", "port": 17000, "default_model": "tiny-a"},
        "server": {"port": 11500},
        "llama": {"ctx_size": 8192},
    }
    assert got["variables"]["LLMCTL_PORT"] == "17000"
    assert got["service"]["environment"]["GGML_VK_VISIBLE_DEVICES"] == "0"
    unit = got["service"]["serviceConfig"]
    assert (unit["User"], unit["Group"]) == ("alice", "users")
    assert got["users"] == {} and got["groups"] == []
    # Models under /home: /home must stay readable.
    assert unit["ProtectHome"] == "read-only"
    assert any(
        "ln -sfn" in line
        and "/home/alice/models" in line
        and line.endswith(" /var/lib/llmctl/gguf")
        for line in got["execStartPre"].splitlines()
    ), got["execStartPre"]


def test_module_rejects_what_it_cannot_honour(module_eval: dict) -> None:
    got = module_eval["clashing"]
    failed = "\n".join(got["failedAssertions"])
    assert "settings.daemon sets port: use services.llmctld.port" in failed
    assert "must not set PATH" in failed
    assert "modelsDir must be an absolute path" in failed
    assert any("no authentication" in w for w in got["warnings"])


def test_worker_module_runs_llmctl_worker_on_loopback_with_an_rpc_build(module_eval: dict
                                                                      ) -> None:
    assert module_eval["worker-disabled"] == {"failedAssertions": [], "firewall": [],
                                              "warnings": []}
    got = module_eval["worker-defaults"]
    assert (got["failedAssertions"], got["warnings"], got["firewall"]) == ([], [], [])
    # PATH: llmctl and a llama.cpp built with rpcSupport, nothing else
    assert got["path"] == ["llmctl-0.1.0", "llama-cpp-rpc"]
    unit = got["serviceConfig"]
    assert unit["ExecStart"].endswith(
        "-llmctl-0.1.0/bin/llmctl 'worker' '--host' '127.0.0.1' '--port' '50052' '--name' 'rpc'")
    assert (unit["KillMode"], unit["Restart"], unit["DynamicUser"]) == ("mixed", "on-failure",
                                                                        True)
    assert {"video", "render"} <= set(unit["SupplementaryGroups"])
    assert got["llmctldAfter"] is None  # no llmctld on this host: nothing to order


def test_worker_module_options_reach_the_command_and_order_llmctld(module_eval: dict) -> None:
    got = module_eval["worker-custom"]
    assert got["failedAssertions"] == []
    assert got["serviceConfig"]["ExecStart"].endswith(
        "'worker' '--host' '10.0.0.7' '--port' '50100' '--name' 'gpu-box' '--allow-network' "
        "'--threads' '8' '--device' 'CUDA0,CUDA1' '--cache-dir' '/var/cache/llmctl-worker'")
    assert got["firewall"] == [50100]
    assert any("no authentication" in w for w in got["warnings"])
    assert got["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    # llmctld on the same host starts after the worker, so it is stopped before it
    assert "llmctl-worker.service" in got["llmctldAfter"]


def test_worker_module_refuses_an_open_address_without_allow_network(module_eval: dict) -> None:
    failed = "\n".join(module_eval["worker-refused"]["failedAssertions"])
    assert "host is 0.0.0.0: rpc-server has no authentication" in failed
    assert "openFirewall needs allowNetwork" in failed
    assert "must not set PATH" in failed
    assert module_eval["worker-refused"]["firewall"] == []


@pytest.fixture(scope="module")
def flake_copy(tmp_path_factory) -> pathlib.Path:
    """The files the flake reads, outside git (a flake in a git tree sees only tracked files)."""
    copy = tmp_path_factory.mktemp("flake")
    for name in ("flake.nix", "pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, copy / name)
    for name in ("nix", "llmctl"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "tests" / "support").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "support" / "fake_llama_server.py", copy / "tests" / "support")
    return copy


@pytest.fixture(scope="module", params=LIBS)
def flake_eval(request, flake_copy: pathlib.Path):
    nix = require_tool("nix")
    env = {**os.environ, "LLMCTL_NIXPKGS_LIB": NIXPKGS_LIB if request.param == "nixpkgs" else ""}

    def evaluate(attr: str, apply: str):
        result = run(
            nix,
            "--extra-experimental-features",
            "nix-command flakes",
            "eval",
            "--impure",
            "--json",
            "--no-write-lock-file",
            "--override-input",
            "nixpkgs",
            f"path:{STUB_NIXPKGS}",
            f"path:{flake_copy}#{attr}",
            "--apply",
            apply,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    evaluate.lib = request.param
    return evaluate


def test_flake_packages_for_every_system(flake_eval) -> None:
    names = flake_eval("packages", "builtins.mapAttrs (_: builtins.mapAttrs (_: p: p.name))")
    assert sorted(names) == sorted(SYSTEMS)
    for system in SYSTEMS:
        assert names[system] == {
            "llmctl": "llmctl-0.1.0",
            "llmctl-unwrapped": "llmctl-0.1.0",
            "default": "llmctl-0.1.0",
        }
    wrapped = flake_eval(
        "packages",
        "ps: with ps.x86_64-linux; { inherit (llmctl) backend; unwrapped = llmctl-unwrapped ? backend; same = default == llmctl; }",
    )
    assert wrapped["backend"].endswith("-llama-cpp") and wrapped["unwrapped"] is False
    assert wrapped["same"] is True


def test_package_dependencies_match_pyproject(flake_eval) -> None:
    """nix/package.nix lists the runtime dependencies itself: it must not drift from pyproject."""
    # (no tomllib: the project supports Python 3.10)
    block = re.search(r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(),
                      re.M | re.S)
    assert block is not None
    wanted = re.findall(r'"([^"]+)"', block.group(1))
    wanted_names = sorted(re.split(r"[<>=!~; \[]", d, maxsplit=1)[0].lower() for d in wanted)
    got = flake_eval("packages", "ps: map (d: d.name) ps.x86_64-linux.llmctl-unwrapped.runtimeDependencies")
    assert sorted(got) == wanted_names


# What nixpkgs' installShellFiles does with `--cmd llmctl --bash F --zsh F --fish F`.
INSTALL_SHELL_COMPLETION = r"""
installShellCompletion() {
  local cmd="" dest
  while [ $# -gt 0 ]; do
    case $1 in
      --cmd) cmd=$2;;
      --bash) dest=$out/share/bash-completion/completions/$cmd.bash;;
      --zsh) dest=$out/share/zsh/site-functions/_$cmd;;
      --fish) dest=$out/share/fish/vendor_completions.d/$cmd.fish;;
      *) echo "installShellCompletion: unexpected $1" >&2; return 1;;
    esac
    if [ "$1" != --cmd ]; then mkdir -p "${dest%/*}"; cat "$2" > "$dest"; fi
    shift 2
  done
}
"""


def test_package_installs_shell_completion(flake_eval, tmp_path: pathlib.Path) -> None:
    """Run the package's postInstall as its build would: $out holds the installed package and
    an unwrapped console script, PYTHONPATH does not know llmctl. The completion files it
    installs must be the CLI's own scripts."""
    post_install = flake_eval("packages", "ps: ps.x86_64-linux.llmctl-unwrapped.postInstall")
    out = tmp_path / "out"
    site = out / "lib/python3.13/site-packages"
    site.mkdir(parents=True)
    (site / "llmctl").symlink_to(REPO / "llmctl")
    (out / "bin").mkdir()
    python = pathlib.Path(sys.base_prefix) / "bin" / "python3"  # not the venv: no llmctl there
    console_script = out / "bin" / "llmctl"
    console_script.write_text(f"#!{python}\nimport sys\nfrom llmctl.cli.main import main\n"
                              "sys.exit(main())\n")
    console_script.chmod(0o755)
    result = run("bash", "-euo", "pipefail", "-c", INSTALL_SHELL_COMPLETION + post_install,
                 env={"PATH": os.environ["PATH"], "out": str(out), "HOME": str(tmp_path)},
                 timeout=60)
    assert result.returncode == 0, result.stderr
    installed = {
        "bash": out / "share/bash-completion/completions/llmctl.bash",
        "zsh": out / "share/zsh/site-functions/_llmctl",
        "fish": out / "share/fish/vendor_completions.d/llmctl.fish",
    }
    for shell, path in installed.items():
        expected = run(str(REPO / "bin" / "llmctl"), "completion", shell, timeout=60)
        assert expected.returncode == 0 and expected.stdout
        assert path.read_text() == expected.stdout, shell


def test_flake_apps_run_the_wrapped_programs(flake_eval) -> None:
    apps = flake_eval("apps", "builtins.mapAttrs (_: builtins.mapAttrs (_: a: a.program))")
    for system in SYSTEMS:
        programs = apps[system]
        assert programs["llmctl"].endswith("-llmctl-0.1.0/bin/llmctl")
        assert programs["llmctld"].endswith("-llmctl-0.1.0/bin/llmctld")
        assert programs["default"] == programs["llmctl"]


def test_flake_checks_and_dev_shells(flake_eval) -> None:
    checks = flake_eval("checks", "builtins.mapAttrs (_: builtins.mapAttrs (_: c: c.name))")
    assert checks["x86_64-linux"]["nixos-module"] == "nixos-test-llmctld"
    assert "nixos-module" not in checks["aarch64-darwin"]
    shells = flake_eval("devShells", "builtins.mapAttrs (_: s: s.default.name)")
    assert sorted(shells) == sorted(SYSTEMS)


def test_flake_nixos_module_uses_the_unwrapped_package(flake_eval) -> None:
    lib = "{}" if flake_eval.lib == "stub" else f"{{ lib = import {NIXPKGS_LIB}; }}"
    got = flake_eval(
        "nixosModules",
        f"m: (import {EVAL_MODULE} ({lib} // {{ module = m.default; setPackage = false; }})).defaults",
    )
    assert got["failedAssertions"] == []
    assert got["packageIsWrapped"] is False
    assert got["path"] == ["llmctl-0.1.0", "llama-cpp"]
