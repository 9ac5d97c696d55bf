"""The CLI as a person at a terminal sees it, and as a pipe does.

Each command runs as a real subprocess with its stderr on a pseudo-terminal (python's ``pty``, a
120x40 window) and its stdout in a file, as ``fleet demo > out.json`` in a terminal would: the bar and
the readable summary must render on stderr, and stdout must stay the JSON scripts parse. The same
commands with stderr on a pipe must print no bar and no ANSI escape at all.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fleetproc import fleet, fleet_env, fleet_json

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = "━"  # rich's bar glyph


def _terminal_env(env: dict[str, str]) -> dict[str, str]:
    """What a person's shell has: a terminal type, no CI, colours allowed."""
    env = {k: v for k, v in env.items() if k not in ("CI", "NO_COLOR", "COLUMNS", "LINES", "FLEET_LOG_FORMAT")}
    env["TERM"] = "xterm-256color"
    return env


def _in_pty(args: list[str], env: dict[str, str], tmp: Path, timeout: float = 180) -> tuple[int, str, str]:
    """Run ``fleet ARGS`` with stderr on a pty; returns (exit code, what the terminal got, stdout)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    out_path = tmp / f"stdout-{time.monotonic_ns()}"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "scraper.cli", *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal has gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail(f"fleet {' '.join(args)} still running after {timeout}s")
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace"), out_path.read_text()


def _piped(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return fleet(*args, env=env, timeout=timeout)


def _plain(terminal: str) -> str:
    return ANSI.sub("", terminal)


def test_demo_in_a_terminal_shows_a_bar_and_a_readable_summary(redis_url: str, tmp_path: Path) -> None:
    env = _terminal_env(fleet_env(redis_url, tmp_path))
    env.pop("FLEET_LOG_LEVEL")  # as `make demo` runs it
    code, term, stdout = _in_pty(["demo", "--products", "12"], env, tmp_path)
    assert code == 0, term[-3000:]
    text = _plain(term)
    assert BAR in text and ANSI.search(term), text[-2000:]
    m = re.findall(r"(\d+)/(\d+) pages .*? (\d+) items .*?DLQ (\d+)", text)
    assert m and m[-1] == (m[-1][1], m[-1][1], "12", "0"), m[-3:]  # the final state: all pages, 12 items
    assert "fleet demo done" in text and "fleet export demo_shop --run demo-" in text
    assert '{"event"' not in text  # no JSON log lines, no Scrapy dumps
    assert "Overridden settings" not in text and "Enabled" not in text
    result = json.loads(stdout)  # stdout: the very JSON as before
    assert list(result) == ["spider", "run", "seeded", "pages", "items", "objects", "raw_snapshots", "dlq",
                            "elapsed_s", "data", "redis"]
    assert result["items"] == 12 and result["dlq"] == 0


def test_demo_piped_prints_no_bar_and_no_escapes(redis_url: str, tmp_path: Path) -> None:
    env = _terminal_env(fleet_env(redis_url, tmp_path))
    env.pop("FLEET_LOG_LEVEL")
    res = _piped(["demo", "--products", "6"], env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "\x1b" not in res.stderr + res.stdout
    assert BAR not in res.stderr and "pages/s" not in res.stderr and "fleet demo done" not in res.stderr
    assert json.loads(res.stdout)["items"] == 6
    assert "Dumping Scrapy stats" not in res.stderr and "Overridden settings" not in res.stderr
    # `make demo` from another checkout: the same Redis (the embedded one under ~/.fleet), another ./data. The demo
    # owns its namespace outright and drops its store record with its queue (it was refused: storebind)
    other = _piped(["demo", "--products", "6"], {**env, "FLEET_STORE": f"file://{tmp_path / 'other'}"})
    assert other.returncode == 0, other.stderr[-3000:]
    assert json.loads(other.stdout)["items"] == 6 and list((tmp_path / "other").rglob("*.jsonl"))


def test_run_and_export_in_a_terminal(redis_url: str, tmp_path: Path, demo_site: Any) -> None:
    """`fleet run`: the bar counts the workers' items from their events; `fleet export`: objects read."""
    env = _terminal_env(fleet_env(redis_url, tmp_path, FLEET_DEMO_URL=demo_site.start_url))
    env.pop("FLEET_LOG_LEVEL")
    code, term, stdout = _in_pty(["run", "demo_shop", "--run", "t1", "--workers", "2"], env, tmp_path)
    assert code == 0, term[-3000:]
    text = _plain(term)
    result = json.loads(stdout)
    assert result["done"] == result["seen"] and result["worker_exit_codes"] == [0, 0]
    assert BAR in text and f"{result['done']}/{result['seen']} pages" in text, text[-2000:]
    assert "60 items" in text and "DLQ 0" in text
    assert "request_leased" not in text  # INFO events are what the bar sums up

    code, term, stdout = _in_pty(["export", "demo_shop", "--run", "t1", "--format", "jsonl"], env, tmp_path)
    assert code == 0, term[-3000:]
    assert "60/60 objects" in _plain(term) and json.loads(stdout)["records"] == 60

    res = _piped(["export", "demo_shop", "--run", "t1", "--format", "jsonl"], env)
    assert res.returncode == 0 and res.stderr == "" and json.loads(res.stdout)["records"] == 60


def test_seed_of_a_large_file_in_a_terminal_and_piped(redis_url: str, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    n = 20_000
    with urls.open("w") as f:
        for i in range(n):
            f.write(f"https://shop.example/catalogue/a-product-with-a-long-slug-{i:06d}/index.html\n")
    assert urls.stat().st_size >= 1 << 20
    env = _terminal_env(fleet_env(redis_url, tmp_path))
    code, term, stdout = _in_pty(["seed", "demo_shop", "--run", "s1", "--urls", str(urls)], env, tmp_path)
    assert code == 0, term[-3000:]
    assert BAR in term and f"{n:,} URLs" in _plain(term)
    assert json.loads(stdout) == {"spider": "demo_shop", "run": "s1", "enqueued": n, "skipped": 0}

    res = _piped(["seed", "demo_shop", "--run", "s1", "--urls", str(urls)], env)
    assert res.returncode == 0 and json.loads(res.stdout)["skipped"] == n
    assert res.stderr == ""


def test_forced_json_on_a_terminal_is_json_without_a_bar(redis_url: str, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"https://shop.example/p/{i:07d}/a-long-enough-line-to-pass-one-mebibyte\n"
                            for i in range(20_000)))
    env = {**_terminal_env(fleet_env(redis_url, tmp_path)), "FLEET_LOG_FORMAT": "json"}
    code, term, stdout = _in_pty(["seed", "demo_shop", "--run", "j1", "--urls", str(urls)], env, tmp_path)
    assert code == 0 and term == "" and json.loads(stdout)["enqueued"] == 20_000
    assert fleet_json("status", "demo_shop", "--json", env=env)["demo_shop"]["runs"]["j1"]["seen"] == 20_000
