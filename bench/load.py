"""Load: N concurrent browser sessions on the Compress page of one dashboard, errors and peak memory.

Usage (from the repository root): python -m bench.load [--sessions 8] [--page compress] [--timeout 900]
         [--data DIR] [--append bench/RESULTS.md]

Starts `streamlit run app.py` on 127.0.0.1 (a fresh data folder unless --data, so every point is computed
once during the run: the sessions must share that work, not each do it), then opens `--sessions` browser
sessions at once in Debian's headless Chromium (separate browser contexts: separate Streamlit sessions),
each waiting until the page shows its WER cards. Reports per session the seconds until the cards showed
and any error (an exception box, a page that never finished), and the peak resident memory of the
server and every process it started (the jobs worker included), sampled every 0.5 s; then the same for
one session alone on the warm server, as the baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
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


def tree_rss_bytes(root: int) -> int:
    """Resident memory of process `root` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
        line = next((ln for ln in status.splitlines() if ln.startswith("VmRSS:")), "VmRSS: 0 kB")
        rss[int(entry.name)] = int(line.split()[1]) * 1024
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


class Sampler(threading.Thread):
    """Peak tree RSS of a process, sampled in the background."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.peak = max(self.peak, tree_rss_bytes(self.pid))


async def one_session(browser, url: str, timeout_s: float) -> dict:
    """Open the page in a fresh context; seconds until the WER card shows, and any error."""
    context = await browser.new_context()
    page = await context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    start = time.perf_counter()
    error = None
    try:
        await page.goto(url, timeout=60_000)
        await page.get_by_text("WER", exact=False).first.wait_for(timeout=timeout_s * 1000)
        await page.locator('[data-testid="stMetric"]').first.wait_for(timeout=timeout_s * 1000)
        boxes = await page.locator('[data-testid="stException"]').all_inner_texts()
        if boxes:
            error = boxes[0][:200]
    except Exception as exc:  # a timeout or a crashed page: reported, the others go on
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    seconds = time.perf_counter() - start
    await context.close()
    return {"seconds": seconds, "error": error, "console_errors": len(console_errors)}


async def sessions(url: str, count: int, timeout_s: float) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            return await asyncio.gather(*(one_session(browser, url, timeout_s) for _ in range(count)))
        finally:
            await browser.close()


def serve(port: int, data: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "SPEECH_LAB_DATA": str(data),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    command += [
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
    ]
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit("the dashboard did not start within 120 s")


def summary(name: str, results: list[dict], peak: int) -> str:
    times = [r["seconds"] for r in results]
    errors = [r["error"] for r in results if r["error"]]
    return (
        f"| {name} | {len(results)} | {statistics.median(times):.1f} | {min(times):.1f}–{max(times):.1f} | "
        f"{len(errors)} | {peak / 2**30:.2f} |" + (f" {errors[0]} |" if errors else " |")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--page", default="compress")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds a session may wait for its cards"
    )
    parser.add_argument("--data", type=Path, help="data folder (default: a fresh temporary one)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--append", type=Path, help="append the table to this markdown file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as fresh:
        server = serve(args.port, args.data or Path(fresh))
        url = f"http://127.0.0.1:{args.port}/{args.page}"
        try:
            rows = []
            for name, count in ((f"{args.sessions} at once, cold", args.sessions), ("1 alone, warm", 1)):
                sampler = Sampler(server.pid)
                sampler.start()
                start = time.perf_counter()
                results = asyncio.run(sessions(url, count, args.timeout))
                sampler.stop.set()
                sampler.join()
                print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
                for i, r in enumerate(results):
                    print(f"  session {i + 1}: {r['seconds']:.1f} s, error: {r['error']}", flush=True)
                rows.append(summary(name, results, sampler.peak))
        finally:
            server.terminate()
            server.wait(timeout=30)
    load = os.getloadavg()[0]
    lines = [
        f"`python -m bench.load --sessions {args.sessions}` against the {args.page} page on 127.0.0.1 "
        f"({os.cpu_count()} CPUs, load average {load:.1f} at the end):",
        "",
        "| run | sessions | median s to cards | min–max s | errors | peak GiB, server + jobs | first error |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with args.append.open("a") as out:
            out.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
