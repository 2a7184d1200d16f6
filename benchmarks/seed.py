"""Bulk-seed a SQLite key store with filler keys for benchmarks (one transaction)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

from gateway.store.sqlite import SqliteKeyStore

SEED_BATCH = 50_000  # rows per executemany call


async def _migrate(db_path: Path) -> None:
    store = SqliteKeyStore(db_path)
    await store.open()
    await store.close()


def seed_store(
    db_path: Path, count: int, roles: tuple[str, ...], name_prefix: str = "seed-"
) -> float:
    """Insert `count` keys with random digests (unusable secrets); return seconds taken.

    The schema comes from the store's own migrations; rows go straight in with executemany,
    which is what a bulk import would do. No change-feed rows: seed before `serve` starts.
    """
    asyncio.run(_migrate(db_path))
    started = time.perf_counter()
    roles_json = json.dumps(sorted(roles))
    now = time.time()
    connection = sqlite3.connect(db_path)
    try:
        with connection:
            for start in range(0, count, SEED_BATCH):
                rows = [
                    (
                        f"{name_prefix}{index:07d}",
                        "",
                        roles_json,
                        "active",
                        hashlib.sha256(os.urandom(16)).digest(),
                        "kg_seed000",
                        now,
                        "seed",
                        now,
                    )
                    for index in range(start, min(count, start + SEED_BATCH))
                ]
                connection.executemany(
                    "INSERT INTO keys (name, description, roles, status, digest, prefix,"
                    " created_at, created_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
    finally:
        connection.close()
    return time.perf_counter() - started
