"""tests/conftest.py turns skips into failures in CI, at collection too: run pytest on small
test files beside a copy of it, once with CI=true and once without."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

FILES = {
    "test_module_skip.py": "import pytest\npytest.skip('no GPU here', allow_module_level=True)\n"
                           "def test_never(): pass\n",
    "test_import_skip.py": "import pytest\npytest.importorskip('no_such_module_for_llmctl')\n"
                           "def test_never(): pass\n",
    "test_runtime_skip.py": "import pytest\ndef test_skips(): pytest.skip('not today')\n",
    "test_passes.py": "def test_ok(): pass\n",
}


def run(work: Path, ci: bool, names: list[str]) -> subprocess.CompletedProcess[str]:
    work.mkdir(exist_ok=True)
    shutil.copy(TESTS / "conftest.py", work / "conftest.py")
    if not (work / "support").exists():
        (work / "support").symlink_to(TESTS / "support")
    for name in [*names, "test_passes.py"]:
        (work / name).write_text(FILES[name])
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(work), "-c", os.devnull,
                           *[str(work / n) for n in [*names, "test_passes.py"]]],
                          capture_output=True, text=True, timeout=120, env=env, cwd=work)


def test_a_module_that_skips_itself_fails_the_run_in_ci(tmp_path: Path) -> None:
    names = ["test_module_skip.py", "test_import_skip.py"]
    r = run(tmp_path / "ci", True, names)
    assert r.returncode != 0, r.stdout + r.stderr
    for name in names:
        assert f"{name} skipped at collection in CI, which must run everything" in r.stdout, \
            r.stdout
    local = run(tmp_path / "local", False, [*names, "test_runtime_skip.py"])
    assert local.returncode == 0, local.stdout + local.stderr  # elsewhere: ordinary skips
    assert "3 skipped" in local.stdout and "1 passed" in local.stdout, local.stdout


def test_a_test_that_skips_fails_the_run_in_ci(tmp_path: Path) -> None:
    r = run(tmp_path / "ci", True, ["test_runtime_skip.py"])
    assert r.returncode != 0, r.stdout + r.stderr
    assert "skipped in CI, which must run everything" in r.stdout, r.stdout
