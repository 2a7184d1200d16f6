"""Where one keygate worker spends its time under wrk: py-spy samples, top functions by self time.

    python -m benchmarks.profile [--seconds 10] [--access-log on|off] [--top 25] [--path small]

One upstream nginx, one `keygate serve --workers 1` (10,000 keys, access log on by default,
as operators run it), wrk -c32 on the keyed path while `py-spy record` samples the worker
(250 Hz by default, idle time not counted; each sample pauses the worker, as nonblocking
samples tear stacks and credit one function's time to another). The report is py-spy's `top`
view of the whole run: each function's share of samples as self time (the function itself
running) and as total time (it or what it called), plus the request rate wrk saw. Needs
py-spy (a dev dependency), nginx and wrk; py-spy needs ptrace rights (root, or
kernel.yama.ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import keygate, nginx
from benchmarks.nginx import BIG_PATH, SMALL_PATH
from benchmarks.procs import LOOPBACK, free_port, free_ports
from benchmarks.wrk import find_wrk, run_wrk

SAMPLE_RATE_HZ = 250  # default py-spy samples per second
PYSPY_OVERRUN_S = 30.0  # seconds py-spy may take beyond the run to write its output
WARMUP_S = 1.0  # seconds of wrk before sampling starts
PATHS = {"small": SMALL_PATH, "1MiB": BIG_PATH}
THREAD_FRAMES = ("thread (", "process ")  # py-spy's pseudo-frames with --threads/--subprocesses


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds sampled")
    parser.add_argument("--rate", type=int, default=SAMPLE_RATE_HZ, help="py-spy samples/s")
    parser.add_argument("--access-log", choices=("on", "off"), default="on")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument("--path", choices=tuple(PATHS), default="small")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32, help="wrk -c")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    return parser.parse_args(argv)


def frame_name(frame: str) -> str:
    """Return `function (module.py)` for one collapsed-stack frame `function (path:line)`."""
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    parts = Path(path).parts
    for anchor in ("gateway", "aiohttp", "asyncio", "uvloop", "multidict", "yarl"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor) :])
            break
    else:
        path = Path(path).name
    return f"{function} ({path})"


def top_table(collapsed: str) -> tuple[int, list[tuple[str, int, int]]]:
    """Return the sample count and (function, self, total) rows from collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if not f.startswith(THREAD_FRAMES)]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    rows = [(name, own[name], total[name]) for name in total]
    rows.sort(key=lambda row: (row[1], row[2]), reverse=True)
    return samples, rows


def main(argv: list[str] | None = None) -> int:
    """Run the profile once and print py-spy's top view."""
    args = parse_args(argv)
    pyspy, wrk, nginx_binary = shutil.which("py-spy"), find_wrk(), nginx.find_nginx()
    if not (pyspy and wrk and nginx_binary):
        print("error: needs py-spy, wrk and nginx on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="keygate-profile-") as temp:
        root = Path(temp)
        upstream_port = free_port()
        upstream = nginx.start_upstream(nginx_binary, root, upstream_port)
        try:
            return _profile(args, root, upstream_port, pyspy, wrk)
        finally:
            upstream.stop()


def _profile(args: argparse.Namespace, root: Path, upstream_port: int, pyspy: str, wrk: str) -> int:
    """Start keygate, load it with wrk, sample it with py-spy, print the table."""
    directory = root / "keygate"
    directory.mkdir()
    listen_port, admin_port = free_ports(2)
    config, key = keygate.prepare_gateway(
        directory,
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_port=upstream_port,
        keys=args.keys,
        access_log=args.access_log == "on",
    )
    process = keygate.start_keygate(
        config, 1, listen_port=listen_port, key=key, log_path=root / "keygate.log",
        startup_timeout_s=60.0,
    )  # fmt: skip
    url = f"http://{LOOPBACK}:{listen_port}{PATHS[args.path]}"
    headers = {keygate.KEY_HEADER: key}
    raw = root / "stacks.txt"
    try:
        run_wrk(wrk, url, duration_s=WARMUP_S, connections=args.connections, threads=1,
                timeout_s=10.0, headers=headers)  # fmt: skip
        sampler = subprocess.Popen(
            [pyspy, "record", "--pid", str(process.popen.pid), "--rate", str(args.rate),
             "--duration", str(int(args.seconds)), "--format", "raw", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        result, _ = run_wrk(wrk, url, duration_s=args.seconds, connections=args.connections,
                            threads=1, timeout_s=10.0, headers=headers)  # fmt: skip
        _, error = sampler.communicate(timeout=args.seconds + PYSPY_OVERRUN_S)
        if sampler.returncode != 0:
            print(f"py-spy failed: {error.decode(errors='replace')}", file=sys.stderr)
            return 1
    finally:
        process.stop()
    collapsed = raw.read_text()
    if args.raw:
        args.raw.write_text(collapsed)
    samples, rows = top_table(collapsed)
    print(
        f"keygate --workers 1, access log {args.access_log}, {args.path} path, "
        f"wrk -c{args.connections}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms; "
        f"py-spy {args.rate} Hz for {args.seconds:g} s: {samples} samples"
    )
    print(f"{'%own':>6} {'%total':>7}  function")
    for name, own, total in rows[: args.top]:
        print(f"{own / samples:>6.1%} {total / samples:>7.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
