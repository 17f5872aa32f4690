"""The whole tree stays formatted and lint-clean under pyproject.toml's ruff settings (line length 110)."""

import subprocess
import sys

from conftest import REPO


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_lint_passes():
    done = ruff("check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_format_is_applied():
    done = ruff("format", "--no-cache", "--check", ".")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
