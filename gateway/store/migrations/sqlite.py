"""SQLite schema migrations and the routine that applies them, each in its own transaction."""

from __future__ import annotations

import contextlib
import sqlite3
import time

import aiosqlite

from gateway.store.migrations import Migration, SchemaTooNewError, check_sequence, too_new

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "SchemaTooNewError",
    "apply_migrations",
    "schema_version",
]

# Fills audit_keys from the key ids batch entries list in their details (migration, copy).
AUDIT_KEYS_FROM_DETAILS = """
    INSERT OR IGNORE INTO audit_keys (key_id, audit_id)
    SELECT CAST(ids.value AS INTEGER), audit.id
    FROM audit, json_each(audit.details, '$.key_ids') AS ids
    WHERE audit.action IN ('revoke_all', 'reinstate_all', 'delete_revoked')
"""

# Statements are run one by one (never executescript, which commits implicitly), so a
# migration and its schema_version row commit together or not at all.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "keys, change feed, audit log, admin accounts",
        (
            """
            CREATE TABLE keys (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                name         TEXT    NOT NULL UNIQUE,
                description  TEXT    NOT NULL DEFAULT '',
                roles        TEXT    NOT NULL,
                status       TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
                digest       BLOB    NOT NULL UNIQUE,
                prefix       TEXT    NOT NULL,
                created_at   REAL    NOT NULL,
                created_by   TEXT    NOT NULL,
                updated_at   REAL    NOT NULL,
                revoked_at   REAL,
                expires_at   REAL,
                last_used_at REAL,
                use_count    INTEGER NOT NULL DEFAULT 0
            )
            """,
            "CREATE INDEX keys_status ON keys (status)",
            """
            CREATE TABLE key_changes (
                seq    INTEGER PRIMARY KEY AUTOINCREMENT,
                key_id INTEGER NOT NULL,
                digest BLOB    NOT NULL,
                op     TEXT    NOT NULL CHECK (op IN ('upsert', 'delete'))
            )
            """,
            """
            CREATE TABLE audit (
                id       INTEGER PRIMARY KEY AUTOINCREMENT,
                at       REAL    NOT NULL,
                actor    TEXT    NOT NULL,
                action   TEXT    NOT NULL,
                key_id   INTEGER,
                key_name TEXT,
                details  TEXT    NOT NULL DEFAULT '{}'
            )
            """,
            "CREATE INDEX audit_key_id ON audit (key_id)",
            "CREATE INDEX audit_key_name ON audit (key_name)",
            "CREATE INDEX audit_actor ON audit (actor)",
            """
            CREATE TABLE admins (
                name          TEXT    PRIMARY KEY,
                password_hash TEXT    NOT NULL,
                grants        TEXT    NOT NULL,
                grant_all     INTEGER NOT NULL CHECK (grant_all IN (0, 1)),
                created_at    REAL    NOT NULL,
                updated_at    REAL    NOT NULL
            )
            """,
        ),
    ),
    Migration(
        2,
        "failed admin logins per address and per account (shared login throttle)",
        (
            """
            CREATE TABLE login_failures (
                subject TEXT NOT NULL,
                at      REAL NOT NULL
            )
            """,
            "CREATE INDEX login_failures_subject ON login_failures (subject, at)",
            "CREATE INDEX login_failures_at ON login_failures (at)",
        ),
    ),
    Migration(
        3,
        "addresses each admin logged in from (exempt from that account's lockout)",
        (
            """
            CREATE TABLE trusted_logins (
                account TEXT NOT NULL,
                address TEXT NOT NULL,
                at      REAL NOT NULL,
                PRIMARY KEY (account, address)
            )
            """,
        ),
    ),
    Migration(
        4,
        "one-row table the readiness probe writes (a full or read-only disk shows)",
        (
            """
            CREATE TABLE store_health (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                at REAL    NOT NULL
            )
            """,
        ),
    ),
    Migration(
        5,
        "admin web-page sessions (token hashes); key-list sort indexes",
        (
            # Only the SHA-256 of a session token is stored; `stamp` is a digest of the
            # admin's password hash and grants when the session began (a change ends it).
            """
            CREATE TABLE admin_sessions (
                token_hash BLOB PRIMARY KEY,
                admin      TEXT NOT NULL,
                stamp      TEXT NOT NULL,
                created_at REAL NOT NULL,
                last_seen  REAL NOT NULL
            )
            """,
            "CREATE INDEX admin_sessions_admin ON admin_sessions (admin)",
            "CREATE INDEX admin_sessions_last_seen ON admin_sessions (last_seen)",
            # Keyset paging of the key list by name, creation and last use (page's sorts).
            "CREATE INDEX keys_name_nocase ON keys (name COLLATE NOCASE, id)",
            "CREATE INDEX keys_created ON keys (created_at, id)",
            "CREATE INDEX keys_last_used ON keys (IFNULL(last_used_at, -1), id)",
        ),
    ),
    Migration(
        6,
        "change-feed entry times and the pruning watermark (the feed no longer grows forever)",
        (
            "ALTER TABLE key_changes ADD COLUMN at REAL",
            """
            CREATE TABLE feed_state (
                id             INTEGER PRIMARY KEY CHECK (id = 1),
                pruned_through INTEGER NOT NULL
            )
            """,
            "INSERT INTO feed_state (id, pruned_through) VALUES (1, 0)",
        ),
    ),
    Migration(
        7,
        "key rolls: the replaced secret's digest, the end of its overlap, when it was rolled",
        (
            "ALTER TABLE keys ADD COLUMN previous_digest BLOB",
            # `keys identify` finds a leaked secret a roll replaced, too.
            "CREATE INDEX keys_previous_digest ON keys (previous_digest)",
            "ALTER TABLE keys ADD COLUMN previous_expires_at REAL",
            "ALTER TABLE keys ADD COLUMN rolled_at REAL",
        ),
    ),
    Migration(
        8,
        "webhook delivery: the audit id delivered through, expiry notices sent; expiry index",
        (
            """
            CREATE TABLE notify_state (
                id       INTEGER PRIMARY KEY CHECK (id = 1),
                audit_id INTEGER NOT NULL
            )
            """,
            # One row per key, threshold (days before expiry) and expiry: a new expires_at
            # gets its notices again, a restart never resends one.
            """
            CREATE TABLE expiry_notices (
                key_id     INTEGER NOT NULL,
                days       INTEGER NOT NULL,
                expires_at REAL    NOT NULL,
                sent_at    REAL    NOT NULL,
                PRIMARY KEY (key_id, days, expires_at)
            )
            """,
            "CREATE INDEX keys_expires ON keys (expires_at)",
        ),
    ),
    Migration(
        9,
        "a key's own rate limit (JSON {requests, per, burst}), over its roles' default",
        ("ALTER TABLE keys ADD COLUMN rate_limit TEXT",),
    ),
    Migration(
        10,
        "idempotent creates (key per actor, request fingerprint); audit entries by every key",
        (
            # The secret is never stored: a repeated create is answered without it.
            """
            CREATE TABLE idempotency_keys (
                actor       TEXT    NOT NULL,
                idem_key    TEXT    NOT NULL,
                fingerprint TEXT    NOT NULL,
                key_id      INTEGER NOT NULL,
                created_at  REAL    NOT NULL,
                PRIMARY KEY (actor, idem_key)
            )
            """,
            "CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)",
            # Every key a batch touched, so a key's history (by id) includes its batches.
            """
            CREATE TABLE audit_keys (
                key_id   INTEGER NOT NULL,
                audit_id INTEGER NOT NULL,
                PRIMARY KEY (key_id, audit_id)
            )
            """,
            AUDIT_KEYS_FROM_DETAILS,
        ),
    ),
    Migration(
        11,
        "webhook delivery per receiver (cursor acknowledged, retry state, lease), abandoned events",
        (
            # receiver: a digest of the URL, never the URL (it may carry credentials).
            """
            CREATE TABLE notify_receivers (
                receiver      TEXT    PRIMARY KEY,
                cursor_id     INTEGER NOT NULL,
                attempts      INTEGER NOT NULL DEFAULT 0,
                first_attempt REAL,
                next_attempt  REAL,
                last_error    TEXT,
                owner         TEXT,
                lease_until   REAL
            )
            """,
            """
            CREATE TABLE notify_abandoned (
                id            INTEGER PRIMARY KEY AUTOINCREMENT,
                receiver      TEXT    NOT NULL,
                audit_id      INTEGER NOT NULL,
                type          TEXT    NOT NULL,
                attempts      INTEGER NOT NULL,
                first_attempt REAL    NOT NULL,
                abandoned_at  REAL    NOT NULL,
                last_error    TEXT    NOT NULL
            )
            """,
            "CREATE INDEX notify_abandoned_at ON notify_abandoned (abandoned_at)",
            # The one shared cursor moved before delivery; per-receiver cursors replace it.
            "DROP TABLE notify_state",
        ),
    ),
    Migration(
        12,
        "admin sign-in with an identity: a session's source, subject, display name, sealed token",
        (
            # NULL source: a local account's session. The sealed credentials (the token that
            # re-verifies the grants, or a refresh token) are encrypted under a key derived
            # from the session token, which only the browser holds.
            "ALTER TABLE admin_sessions ADD COLUMN source TEXT",
            "ALTER TABLE admin_sessions ADD COLUMN subject TEXT",
            "ALTER TABLE admin_sessions ADD COLUMN display_name TEXT",
            "ALTER TABLE admin_sessions ADD COLUMN sealed BLOB",
            "ALTER TABLE admin_sessions ADD COLUMN expires_at REAL",
        ),
    ),
    Migration(
        13,
        "usage per key and hour: forwarded, refused (policy, rate limit), upstream 5xx, addresses",
        (
            # hour: unix seconds // 3600. Every instance adds its counts (an additive upsert);
            # addresses is the sum of each instance's distinct count (an upper bound across
            # instances), addresses_capped 1 when an instance saw more than it tracks.
            """
            CREATE TABLE key_usage (
                key_id           INTEGER NOT NULL,
                hour             INTEGER NOT NULL,
                forwarded        INTEGER NOT NULL DEFAULT 0,
                denied           INTEGER NOT NULL DEFAULT 0,
                limited          INTEGER NOT NULL DEFAULT 0,
                upstream_errors  INTEGER NOT NULL DEFAULT 0,
                addresses        INTEGER NOT NULL DEFAULT 0,
                addresses_capped INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (key_id, hour)
            )
            """,
            "CREATE INDEX key_usage_hour ON key_usage (hour)",
        ),
    ),
    Migration(
        14,
        "usage per key, day and policy rule; the last client addresses per key",
        (
            # day: unix seconds // 86400. A rule is named as written (role, methods, path),
            # never by its index, so a policy reload cannot relabel counts. Every instance
            # adds its counts (an additive upsert).
            """
            CREATE TABLE key_rule_usage (
                key_id       INTEGER NOT NULL,
                day          INTEGER NOT NULL,
                role         TEXT    NOT NULL,
                methods      TEXT    NOT NULL,
                path         TEXT    NOT NULL,
                count        INTEGER NOT NULL DEFAULT 0,
                last_used_at REAL NOT NULL,
                PRIMARY KEY (key_id, day, role, methods, path)
            )
            """,
            "CREATE INDEX key_rule_usage_day ON key_rule_usage (day)",
            # The newest few addresses per key (the flush and the prune trim the rest).
            """
            CREATE TABLE key_addresses (
                key_id       INTEGER NOT NULL,
                address      TEXT    NOT NULL,
                last_seen_at REAL NOT NULL,
                PRIMARY KEY (key_id, address)
            )
            """,
            "CREATE INDEX key_addresses_seen ON key_addresses (last_seen_at)",
        ),
    ),
)

check_sequence(MIGRATIONS)

LATEST_VERSION = MIGRATIONS[-1].version

_CREATE_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version     INTEGER PRIMARY KEY,
        description TEXT    NOT NULL,
        applied_at  REAL    NOT NULL
    )
"""
_CURRENT_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_version"


async def _in_transaction(db: aiosqlite.Connection, statements: tuple[str, ...]) -> None:
    """Run statements in one BEGIN IMMEDIATE transaction (waits for, never races, writers)."""
    try:
        await db.execute("BEGIN IMMEDIATE")
        for statement in statements:
            await db.execute(statement)
        await db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            await db.execute("ROLLBACK")
        raise


async def schema_version(db: aiosqlite.Connection) -> int:
    """Return the highest applied migration version (0 for a fresh database)."""
    rows = list(await db.execute_fetchall(_CURRENT_VERSION))
    return int(rows[0][0])


async def apply_migrations(
    db: aiosqlite.Connection, migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[int]:
    """Apply pending migrations in order, each in its own transaction; return their versions.

    `db` must be in autocommit mode (isolation_level=None). Safe when several processes
    open a fresh file at once: the version is re-read under the write lock, so each
    migration runs exactly once.
    """
    await _in_transaction(db, (_CREATE_VERSION_TABLE,))
    latest = migrations[-1].version if migrations else 0
    applied: list[int] = []
    for migration in migrations:
        if await schema_version(db) >= migration.version:
            continue
        try:
            await db.execute("BEGIN IMMEDIATE")
            # Another process may have applied it between our check and the lock.
            if await schema_version(db) < migration.version:
                for statement in migration.statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_version (version, description, applied_at) "
                    "VALUES (?, ?, ?)",
                    (migration.version, migration.description, time.time()),
                )
                applied.append(migration.version)
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await db.execute("ROLLBACK")
            raise
    current = await schema_version(db)
    if current > latest:
        raise too_new(current, latest)
    return applied
