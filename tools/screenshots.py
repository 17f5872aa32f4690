#!/usr/bin/env python3
"""Refresh the README images in docs/screenshots/ from a browser test run, only when asked to.

The browser tests (tests/app/test_browser.py) write their screenshots into the git-ignored test-artifacts/
and never touch tracked files, so running the tests cannot change the README's images by accident. This
script is the deliberate step: it copies test-artifacts/<name>.png onto docs/screenshots/<name>.png.

Usage (from the repository root)
-----
    python tools/screenshots.py [NAME ...]
        Copy the screenshots the last browser run left in test-artifacts/ (default: every image already
        in docs/screenshots/, e.g. `home record` for just those two). Each copy is listed with the time
        its screenshot was taken; names with no screenshot in test-artifacts/ are listed and left as they are.

    python tools/screenshots.py --run [NAME ...]
        First run the browser tests (a few minutes; the system Chromium at /usr/bin/chromium or $CHROMIUM,
        never `playwright install`), then copy only screenshots taken by that run. Copies nothing if the
        tests fail.

The browser tests take home, compress, record, pareto, pareto-dark (the dark theme), testset, distill and
deploy; docs/screenshots/learn.png comes from no test and stays as it is.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"  # where tests/app/browser.py leaves screenshots (git-ignored)
DOCS = REPO / "docs" / "screenshots"  # the README's images (tracked)
BROWSER_TESTS = "tests/app/test_browser.py"


def run_browser_tests() -> int:
    """pytest on the browser tests, output shown as it comes; the exit code."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", BROWSER_TESTS]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=REPO).returncode


def copy_screenshots(names: list[str], taken_after: float = 0.0) -> tuple[list[str], list[str]]:
    """Copy test-artifacts/<name>.png onto docs/screenshots/ for each name whose screenshot exists and was
    taken after `taken_after` (a time.time()); (copied, skipped) names."""
    copied, skipped = [], []
    DOCS.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = ARTIFACTS / f"{name}.png"
        if not source.is_file() or source.stat().st_mtime < taken_after:
            skipped.append(name)
            continue
        shutil.copyfile(source, DOCS / source.name)
        taken = datetime.fromtimestamp(source.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        print(f"{source.relative_to(REPO)} (taken {taken}) -> {(DOCS / source.name).relative_to(REPO)}")
        copied.append(name)
    return copied, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", help="images to refresh, without .png (default: all in docs/screenshots/)"
    )
    parser.add_argument(
        "--run", action="store_true", help="run the browser tests first, then copy only what they took"
    )
    args = parser.parse_args(argv)
    names = args.names or sorted(path.stem for path in DOCS.glob("*.png"))
    started = time.time()
    if args.run:
        code = run_browser_tests()
        if code != 0:
            print(
                f"browser tests failed (exit code {code}): docs/screenshots/ left unchanged", file=sys.stderr
            )
            return code
    copied, skipped = copy_screenshots(names, taken_after=started if args.run else 0.0)
    if skipped:
        fresh = "new " if args.run else ""
        print(f"no {fresh}screenshot in test-artifacts/ for: {', '.join(skipped)} (left unchanged)")
    return 0 if copied else 1


if __name__ == "__main__":
    sys.exit(main())
