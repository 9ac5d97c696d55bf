"""Capture a crawl's Redis commands once, replay them into a fresh redis-server: a deterministic A/B of the
queue scripts' cost per page (issue #18).

Why: Redis's CPU time per page in ``make bench`` moves with whatever else runs on the machine's cores (the
worker, nginx, a test run on the SMT sibling), by ±15% between identical runs here. Replaying the same
commands into a private redis-server under callgrind counts instructions, which do not move: two trees'
scripts compared on exactly the same work.

- ``BENCH_CAPTURE=FILE`` makes the crawl section ``MONITOR`` its Redis during a Fleet contender's run (seed
  and workers) into FILE, after one line naming each script's SHA (``# scripts {name: sha}``), so a replay
  can find the same script in another tree. Each Fleet run writes FILE anew, and MONITOR costs Redis CPU (the
  run's row says ``captured``: its figures are not the bench's). Capture one round of ``c``:
  ``BENCH_CAPTURE=/tmp/cap.txt BENCH_VARIANTS=c BENCH_ROUNDS=1 BENCH_WARMUP=0 ... make bench``.
- ``python -m tests.bench.replay FILE [--pages N] [--callgrind]`` replays FILE's client commands (not the
  commands scripts ran, which MONITOR also lists, nor the bench's own INFO/CONFIG) in order, one at a time,
  into a fresh redis-server (AOF everysec, as the bench), each ``EVALSHA`` sent to this tree's script of the
  same name; prints Redis CPU and AOF bytes per page, and with ``--callgrind`` (valgrind installed) the
  instructions per page. Run it from each tree (``PYTHONPATH=<tree>``) on the same FILE. The scripts must
  take the same arguments in both trees (a change of a script's arguments needs a capture of its own).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import redis

from scraper.queue import scripts
from tests.bench.procs import aof_size, cpu_seconds, redis_binary
from tests.bench.site import free_port, wait_port

__all__ = ["callgrind_total", "monitor", "parse_line", "read_capture"]

_LINE = re.compile(rb'\+[\d.]+ \[\d+ ([^\]]+)\] (.*)$')
_ESC = {"\\": b"\\", '"': b'"', "n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b"}
#: the bench's and the clients' own commands, not the crawl's work
_SKIP = {b"MONITOR", b"INFO", b"CLIENT", b"HELLO", b"SUBSCRIBE", b"UNSUBSCRIBE", b"PSUBSCRIBE", b"PING", b"CONFIG",
         b"SLOWLOG", b"SCRIPT", b"FLUSHALL", b"COMMAND"}


def _shas() -> dict[str, str]:
    return {name: scripts.load(name).sha for name in scripts.names()}


@contextlib.contextmanager
def monitor(port: int, out: Path) -> Iterator[None]:
    """MONITOR the redis-server on ``port`` into ``out`` while the block runs (a thread reads the socket).

    Every script is loaded first: a client's EVALSHA that met NOSCRIPT is listed by MONITOR and then sent
    again (after SCRIPT LOAD, or as EVAL), and a replay, whose server has every script, would run it twice."""
    import socket

    loader = redis.Redis(port=port)
    for name in scripts.names():
        loader.script_load(scripts.load(name).source)
    loader.close()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"MONITOR\r\n")
    stop = threading.Event()
    with out.open("wb") as fh:
        fh.write(b"# scripts " + json.dumps(_shas()).encode() + b"\r\n")

        def pump() -> None:
            sock.settimeout(0.2)
            while not stop.is_set():
                try:
                    data = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not data:
                    return
                fh.write(data)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        time.sleep(0.2)  # MONITOR's +OK before the first command of the run
        try:
            yield
        finally:
            time.sleep(0.5)  # the last replies' commands
            stop.set()
            t.join()
            sock.close()


def parse_line(line: bytes) -> tuple[bytes, list[bytes]] | None:
    """One MONITOR line as (source, args): source is ``lua`` for a command a script ran."""
    m = _LINE.match(line)
    if not m:
        return None
    rest, args, i = m.group(2), [], 0
    while i < len(rest):
        i += 1  # the opening quote
        buf = bytearray()
        while rest[i : i + 1] != b'"':
            if rest[i : i + 1] == b"\\":
                esc = rest[i + 1 : i + 2].decode()
                if esc == "x":
                    buf.append(int(rest[i + 2 : i + 4], 16))
                    i += 4
                else:
                    buf += _ESC[esc]
                    i += 2
            else:
                buf += rest[i : i + 1]
                i += 1
        args.append(bytes(buf))
        i += 2  # the closing quote and the space
    return m.group(1), args


def read_capture(path: Path) -> list[list[bytes]]:
    """The client commands of a capture, each EVALSHA pointed at this tree's script of the same name."""
    lines = path.read_bytes().split(b"\r\n")
    if not lines[0].startswith(b"# scripts "):
        raise SystemExit(f"{path}: not a capture (no '# scripts' line; see BENCH_CAPTURE)")
    names = {sha: name for name, sha in json.loads(lines[0][len(b"# scripts "):]).items()}
    mine = _shas()

    out = []
    for line in lines[1:]:
        parsed = parse_line(line)
        if parsed is None:
            continue
        source, args = parsed
        if source == b"lua" or not args or args[0].upper() in _SKIP:
            continue
        whole = hashlib.sha1(args[1]).hexdigest() if args[0].upper() == b"EVAL" else ""
        if whole in names:  # a script sent whole
            args[:2] = [b"EVALSHA", whole.encode()]
        if args[0].upper() == b"EVALSHA":
            args[1] = mine[names[args[1].decode()]].encode()
        out.append(args)
    return out


def callgrind_total(out_file: str) -> int:
    """The instructions a callgrind output file counted (callgrind_annotate's PROGRAM TOTALS)."""
    text = subprocess.run(["callgrind_annotate", out_file], capture_output=True, text=True, check=True).stdout
    m = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text)
    return int(m.group(1).replace(",", "")) if m else 0


def replay(path: Path, pages: int, callgrind: bool, log: IO[str]) -> dict[str, Any]:
    cmds = read_capture(path)
    work = Path(tempfile.mkdtemp(prefix="fleet-replay-"))
    port = free_port()
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work), "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--auto-aof-rewrite-percentage", "0"]
    cg_out = str(work / "callgrind.out")
    if callgrind:
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_out}", "--dump-instr=no", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=120)
        r = redis.Redis(port=port, socket_timeout=600)
        for name in scripts.names():
            r.script_load(scripts.load(name).source)
        before = cpu_seconds(r.info("cpu")), aof_size(r)
        errors = 0
        for args in cmds:
            try:
                r.execute_command(*args)  # type: ignore[no-untyped-call]
            except redis.ResponseError as exc:
                errors += 1
                if errors <= 3:
                    print(f"error: {args[0]!r}: {str(exc)[:200]}", file=log)
        used, aof = cpu_seconds(r.info("cpu")) - before[0], aof_size(r)
        r.close()
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    res: dict[str, Any] = {"commands": len(cmds), "errors": errors, "pages": pages,
                           "redis_cpu_us_per_page": used / pages * 1e6, "aof_bytes_per_page": (aof - before[1]) / pages}
    if callgrind:
        res["instructions_per_page"] = callgrind_total(cg_out) // pages
    shutil.rmtree(work, ignore_errors=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("capture", type=Path, help="a file BENCH_CAPTURE wrote")
    ap.add_argument("--pages", type=int, default=5250, help="pages the captured crawl fetched (default 5,250)")
    ap.add_argument("--callgrind", action="store_true", help="run redis-server under valgrind: instructions/page")
    a = ap.parse_args()
    if a.callgrind and not shutil.which("valgrind"):
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    print(json.dumps(replay(a.capture, a.pages, a.callgrind, sys.stderr)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
