"""Helpers for real-browser tests: a `streamlit run app.py` server and Debian's headless Chromium via
playwright.

Not a test module. Use it from a test file:

    from browser import open_page, serve_app

    @pytest.fixture(scope="module")
    def streamlit_server():
        with serve_app() as server:
            yield server

    def test_something(streamlit_server):
        with open_page(streamlit_server) as page:                   # plain browser
            ...
        with open_page(streamlit_server, fake_audio=SAMPLE) as page:  # fake microphone playing SAMPLE
            ...

The Chromium is the system one (`apt-get install -y chromium chromium-driver`, as `.ci/run` does); never
`playwright install`. Without Chromium or playwright a test fails in CI (CI=true) and skips elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app.py"
ARTIFACTS = REPO / "test-artifacts"  # git-ignored: screenshots and server logs of the last run
SAMPLES = REPO / "assets" / "samples"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT = 120  # seconds until /_stcore/health answers
LOG_TAIL = 6000  # characters of the server log attached to a failure


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_browser() -> str | None:
    """Why a browser test cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"the Python package playwright is not installed (pip install -r requirements.txt): {exc}"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return (
            f"Chromium not found at {CHROMIUM} (apt-get install -y chromium chromium-driver, "
            "or set CHROMIUM=/path/to/chromium); do not use `playwright install`"
        )
    return None


def require_browser() -> None:
    """Fail (in CI) or skip (elsewhere) with a clear reason when Chromium or playwright is missing."""
    reason = missing_browser()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"browser test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"browser test skipped (outside CI): {reason}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StreamlitServer:
    """`streamlit run app.py` on a free local port, as a subprocess with its output in a log file."""

    def __init__(self, app: Path = APP, port: int | None = None, env: dict | None = None):
        self.app, self.port = Path(app), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_file = tempfile.NamedTemporaryFile(prefix="streamlit-", suffix=".log", delete=False)
        self.log_path = Path(self._log_file.name)
        self._env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> StreamlitServer:
        command = [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(self.app),
            "--server.headless",
            "true",
            "--server.port",
            str(self.port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            # other people edit the tree while tests run: never rerun the app on a file change
            "--server.fileWatcherType",
            "none",
            "--server.runOnSave",
            "false",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=self.app.parent,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"streamlit exited with code {self.process.returncode} before serving\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"streamlit did not answer {self.url}/_stcore/health within {timeout:.0f} s\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the server (and only it: it runs in its own process group), then keep its log."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log_file.close()
        with contextlib.suppress(OSError):
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copyfile(self.log_path, ARTIFACTS / "streamlit-server.log")

    def log(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = LOG_TAIL) -> str:
        text = self.log()
        text = text if len(text) <= chars else "…" + text[-chars:]
        return f"--- streamlit server log ({self.log_path}) ---\n{text or '(empty)'}\n--- end of log ---"

    @contextlib.contextmanager
    def explain_failures(self) -> Iterator[None]:
        """Re-raise any failure inside the block with the server's log attached."""
        try:
            yield
        except (pytest.skip.Exception, pytest.fail.Exception, KeyboardInterrupt):
            raise
        except BaseException as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{self.log_tail()}") from exc

    def __enter__(self) -> StreamlitServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def serve_app() -> Iterator[StreamlitServer]:
    """The app served by `streamlit run`, always terminated afterwards; checks for a browser first (no point
    starting a server that no browser will visit)."""
    require_browser()
    with StreamlitServer() as server:
        yield server


def chromium_args(fake_audio: str | Path | None = None) -> list[str]:
    """Chromium's command line; with `fake_audio` (a WAV file) the microphone plays that file."""
    args = list(CHROMIUM_ARGS)
    if fake_audio is not None:
        path = Path(fake_audio).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"fake microphone audio {path} does not exist")
        args += [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={path}",
        ]
    return args


@contextlib.contextmanager
def launch_browser(fake_audio: str | Path | None = None):
    """The system Chromium, headless, driven by playwright (`with launch_browser() as browser:`)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=chromium_args(fake_audio)
        )
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(
    server: StreamlitServer,
    path: str = "",
    fake_audio: str | Path | None = None,
    viewport: tuple[int, int] = (1400, 1000),
    timeout_ms: float = 60_000,
    color_scheme: str = "light",
):
    """A page of the app in a fresh browser context, loaded and with Streamlit's UI up.

    With `fake_audio` the microphone permission is granted and the microphone plays that WAV file
    (e.g. `SAMPLES / "hello.wav"`). `color_scheme="dark"` asks for the dark theme the way an operating
    system does (Streamlit follows it). Browser console errors are collected in `page.console_errors`.
    Failures inside the block carry the server log."""
    with server.explain_failures(), launch_browser(fake_audio) as browser:
        context = browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]}, color_scheme=color_scheme
        )
        if fake_audio is not None:
            context.grant_permissions(["microphone"], origin=server.url)
        context.set_default_timeout(timeout_ms)
        page = context.new_page()
        page.console_errors = []
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(f"pageerror: {e}"))
        page.goto(f"{server.url}/{path.lstrip('/')}", wait_until="domcontentloaded")
        page.locator('[data-testid="stApp"]').wait_for(state="attached")
        try:
            yield page
        finally:
            context.close()


def wait_until_idle(page, timeout_ms: float = 300_000) -> None:
    """Wait until the script run finished (Streamlit's 'Running…' status widget is gone)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]') "
        "&& !document.querySelector('[data-testid=\"stSpinner\"]')",
        timeout=timeout_ms,
    )


def exception_boxes(page) -> list[str]:
    """Texts of Streamlit exception boxes (uncaught errors in a page script) on the page."""
    return page.locator('[data-testid="stException"]').all_inner_texts()


def full_page_screenshot(page, path: str | Path) -> Path:
    """Screenshot of the whole app. Streamlit scrolls inside its own container, not the document, so the
    viewport is first stretched to the content's height."""
    height = page.evaluate(
        "() => Math.max(...['[data-testid=\"stMain\"]', '[data-testid=\"stAppViewContainer\"]', "
        "'[data-testid=\"stMainBlockContainer\"]'].map(s => document.querySelector(s)?.scrollHeight || 0), "
        "document.documentElement.scrollHeight)"
    )
    size = page.viewport_size
    stretched = max(size["height"], int(height) + 40)
    page.set_viewport_size({"width": size["width"], "height": stretched})
    # the layout has settled at the new size: the window reports it and two frames were painted since
    page.wait_for_function("(h) => window.innerHeight === h", arg=stretched, timeout=10_000)
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    return path
