"""The buffered access-line writer: batched writes, bounded delay, nothing lost at shutdown."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from support.config import ALL_ROLE, REST, create_key, write_config
from support.http import http_request, raw_request
from support.processes import free_port, reaped, start_serve, wait_for_port
from support.upstreams import Backend

from gateway.proxy import access_writer
from gateway.proxy.access_writer import FLUSH_INTERVAL, FLUSH_LINES, AccessWriter


class CountingStream(io.StringIO):
    """A text stream that counts write calls."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_wait_at_most_the_flush_interval_and_go_out_in_one_write() -> None:
    stream = CountingStream()
    writer = AccessWriter(stream)
    for index in range(10):
        writer.text(f'127.0.0.1 "GET /{index}" 200 2 0.1ms rid=r key=k')
    assert stream.getvalue() == ""
    await asyncio.sleep(FLUSH_INTERVAL * 2)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and stream.writes == 1
    assert all(" INFO keygate.access: 127.0.0.1 " in line for line in lines)
    assert lines[3].endswith('"GET /3" 200 2 0.1ms rid=r key=k')


async def test_a_full_batch_is_written_at_once() -> None:
    stream = CountingStream()
    writer = AccessWriter(stream)
    for index in range(FLUSH_LINES):
        writer.raw(f'{{"n": {index}}}')
    assert stream.writes == 1
    assert len(stream.getvalue().splitlines()) == FLUSH_LINES
    writer.flush()


@pytest.mark.slow
async def test_no_access_line_is_lost_at_shutdown(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    config = write_config(tmp_path / "lines", backend.url, listen_port=port, admin_port=free_port())
    secret = await create_key(config, "counted", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "lines.log")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        for index in range(25):
            target = f"{REST}/_echo/n{index}"
            await raw_request(port, http_request("GET", target, [("X-API-Key", secret)]))
        assert serve.stop() == 0  # right away: lines still buffered must be written
    lines = [line for line in serve.log_text().splitlines() if "keygate.access" in line]
    assert len(lines) == 25, lines
    assert all("key=counted" in line for line in lines)


def test_the_writer_is_off_unless_installed() -> None:
    assert access_writer.active is None  # in-process gateways log through `logging`


# A child that writes access lines through the real writer to its stderr: `count` JSON lines
# of random lengths (some past a pipe's atomic size), flushed in full batches.
PIPE_WRITER = """
import json, random, sys
from gateway.proxy.access_writer import AccessWriter
writer = AccessWriter(sys.stderr)
name, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(name)
for index in range(count):
    pad = "x" * rng.choice((60, 900, 3000, 7000))
    writer.raw(json.dumps({"worker": name, "n": index, "pad": pad}))
writer.flush()
"""


@pytest.mark.slow
def test_lines_from_two_workers_on_one_pipe_arrive_whole(tmp_path: Path) -> None:
    """Batches written to a shared pipe never splice lines (each write fits the atomic size)."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "writer.py"
    script.write_text(PIPE_WRITER, encoding="utf-8")
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    count = 3000
    children = [
        subprocess.Popen([sys.executable, str(script), name, str(count)], stderr=write_end, env=env)
        for name in ("a", "b")
    ]
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while chunk := pipe.read1(512):  # a slow reader: the pipe fills, writers block
            chunks.append(chunk)
    for child in children:
        assert child.wait(timeout=60) == 0
    lines = b"".join(chunks).decode().splitlines()
    records = [json.loads(line) for line in lines]  # a spliced line is not JSON
    for name in ("a", "b"):
        assert sorted(r["n"] for r in records if r["worker"] == name) == list(range(count))
    assert all(len(line.encode()) + 1 <= access_writer.ATOMIC_WRITE for line in lines)


def test_an_over_long_text_line_is_cut_to_the_atomic_size_with_a_mark() -> None:
    line = "2026-12-07 10:00:00,000 1 INFO keygate.access: GET /" + "é" * 5000 + "\n"
    (chunk,) = access_writer.atomic_chunks([line])
    assert len(chunk) <= access_writer.ATOMIC_WRITE
    assert chunk.decode().endswith(access_writer.CUT_MARK + "\n")
    assert chunk.decode().startswith("2026-12-07 10:00:00,000 1 INFO keygate.access: GET /é")
