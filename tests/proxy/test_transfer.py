"""1 GiB up and 1 GiB down through a `serve` process: bytes intact, gateway memory flat.

The gateway runs as its own process so its resident set size (VmRSS from /proc) can be
sampled before and during each transfer; the demo backend hashes what it receives and
streams what it sends, and the client hashes as bytes arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from support.config import REST
from support.processes import Served, rss_bytes, serving
from support.upstreams import BLOB_MODULUS, Backend

# Starts real processes (CLI, server, demo): deselect with -m "not slow" for a fast loop.
pytestmark = pytest.mark.slow

GIB = 1024**3
MIB = 1024**2
CHUNK = MIB  # bytes per client write / read
MAX_RSS_GROWTH = 64 * MIB  # the gateway's RSS may grow at most this much during a transfer
SAMPLE_EVERY = 0.02  # seconds between RSS samples
TRANSFER_TIMEOUT = 120.0  # seconds one 1 GiB transfer may take


@pytest.fixture
async def gateway_process(tmp_path: Path, backend: Backend) -> AsyncIterator[Served]:
    """A gateway process in front of the demo backend (access log off: nothing but bytes)."""
    extra = {"log": {"level": "warning", "access_log": False}}
    async with serving(tmp_path / "transfer", backend, "transfer-bot", extra) as running:
        yield running


@dataclass
class RssSampler:
    """Samples a process's VmRSS in the background while a transfer runs."""

    pid: int
    baseline: int
    samples: list[int] = field(default_factory=list)

    @property
    def peak(self) -> int:
        """The highest RSS seen (bytes)."""
        return max([self.baseline, *self.samples])

    @property
    def growth(self) -> int:
        """Peak RSS minus the baseline (bytes)."""
        return self.peak - self.baseline

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            self.samples.append(rss_bytes(self.pid))
            await asyncio.sleep(SAMPLE_EVERY)

    def report(self, what: str, seconds: float) -> str:
        """One line quoting the figures."""
        return (
            f"{what}: 1 GiB in {seconds:.1f}s ({GIB / MIB / seconds:.0f} MiB/s); gateway VmRSS "
            f"baseline {self.baseline / MIB:.1f} MiB, peak {self.peak / MIB:.1f} MiB, "
            f"growth {self.growth / MIB:.1f} MiB over {len(self.samples)} samples"
        )


@contextlib.contextmanager
def sampling(pid: int) -> Iterator[RssSampler]:
    """Record the baseline now and sample RSS until the block ends."""
    sampler = RssSampler(pid, rss_bytes(pid))
    task = asyncio.get_running_loop().create_task(sampler.run())
    try:
        yield sampler
    finally:
        task.cancel()
        sampler.samples.append(rss_bytes(pid))


async def warm_up(session: aiohttp.ClientSession, gateway: Served) -> None:
    """Move a few MiB each way first so the baseline includes the steady-state buffers."""
    headers = {"X-API-Key": gateway.secret}
    async with session.post(
        f"{gateway.base}{REST}/_echo/warm", data=io.BytesIO(os.urandom(4 * MIB)), headers=headers
    ) as response:
        assert response.status == 200
    async with session.get(f"{gateway.base}{REST}/_blob?size={8 * MIB}", headers=headers) as r:
        assert len(await r.read()) == 8 * MIB


async def test_one_gib_upload_streams_through_with_flat_memory(gateway_process: Served) -> None:
    block = os.urandom(CHUNK)
    expected = hashlib.sha256()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < GIB:
            expected.update(block)
            sent += len(block)
            yield block

    timeout = aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await warm_up(session, gateway_process)
        pid = gateway_process.serve.process.pid
        with sampling(pid) as sampler:
            started = time.monotonic()
            async with session.post(
                f"{gateway_process.base}{REST}/_echo/upload",
                data=body(),
                headers={"X-API-Key": gateway_process.secret},
            ) as response:
                assert response.status == 200
                echoed = await response.json()
            seconds = time.monotonic() - started
    print("\n" + sampler.report("upload", seconds))
    assert sent == GIB
    assert echoed["body_length"] == GIB
    assert echoed["body_sha256"] == expected.hexdigest()
    assert len(sampler.samples) > 10
    assert sampler.growth < MAX_RSS_GROWTH


def blob_sha256(size: int) -> str:
    """SHA-256 of the demo backend's /_blob pattern (byte i is i % 251) of `size` bytes."""
    period = bytes(range(BLOB_MODULUS)) * (CHUNK // BLOB_MODULUS)  # whole periods only
    digest = hashlib.sha256()
    whole, rest = divmod(size, len(period))
    for _ in range(whole):
        digest.update(period)
    digest.update(period[:rest])
    return digest.hexdigest()


async def test_one_gib_download_streams_through_with_flat_memory(gateway_process: Served) -> None:
    received = hashlib.sha256()
    length = 0
    timeout = aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await warm_up(session, gateway_process)
        pid = gateway_process.serve.process.pid
        with sampling(pid) as sampler:
            started = time.monotonic()
            async with session.get(
                f"{gateway_process.base}{REST}/_blob?size={GIB}",
                headers={"X-API-Key": gateway_process.secret},
            ) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == str(GIB)
                async for chunk in response.content.iter_chunked(CHUNK):
                    received.update(chunk)
                    length += len(chunk)
            seconds = time.monotonic() - started
    print("\n" + sampler.report("download", seconds))
    assert length == GIB
    assert received.hexdigest() == blob_sha256(GIB)
    assert len(sampler.samples) > 10
    assert sampler.growth < MAX_RSS_GROWTH
