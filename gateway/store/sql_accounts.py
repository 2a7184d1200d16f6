"""Admin accounts, web sessions and the failed-login throttle in SQL."""

from __future__ import annotations

import dataclasses
import time

from gateway.store.base import (
    AdminAccount,
    AdminSession,
    LoginFailures,
    NameConflictError,
    NotFoundError,
)
from gateway.store.common import (
    ACTION_ADMIN_ADD,
    ACTION_ADMIN_GRANTS,
    ACTION_ADMIN_PASSWD,
    ACTION_ADMIN_REMOVE,
    ADMIN_COLUMNS,
    SESSION_COLUMNS,
    admin_account,
    grants_details,
    roles_json,
    session_of,
)
from gateway.store.sql import SqlBase, marks


class SqlAccounts(SqlBase):
    """The AdminAccounts, Sessions and LoginRecords roles, written once for both backends."""

    # --- admin accounts --------------------------------------------------------
    async def add_admin(
        self, name: str, password_hash: str, grants: tuple[str, ...], grant_all: bool, actor: str
    ) -> AdminAccount:
        """Create an admin account; raise NameConflictError."""
        now = time.time()
        async with self._tx(feed=False) as tx:
            try:
                await tx.execute(
                    f"INSERT INTO admins ({ADMIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    name,
                    password_hash,
                    roles_json(grants),
                    grant_all,
                    now,
                    now,
                )
            except Exception as error:
                if self.dialect.is_unique_violation(error, "admins.name"):
                    raise NameConflictError(f"an admin named {name!r} already exists") from None
                raise
            await self._audit_tx(
                tx,
                now,
                actor,
                ACTION_ADMIN_ADD,
                details={"admin": name, "grants": list(grants), "grant_all": grant_all},
            )
        return AdminAccount(name, password_hash, tuple(grants), grant_all, now, now)

    async def get_admin(self, name: str) -> AdminAccount | None:
        """Return an admin account by name, or None."""
        rows = await self._read(f"SELECT {ADMIN_COLUMNS} FROM admins WHERE name = ?", (name,))
        return admin_account(rows[0]) if rows else None

    async def list_admins(self) -> list[AdminAccount]:
        """Return every admin account ordered by name."""
        rows = await self._read(f"SELECT {ADMIN_COLUMNS} FROM admins ORDER BY name", ())
        return [admin_account(row) for row in rows]

    async def set_admin_password(self, name: str, password_hash: str, actor: str) -> None:
        """Replace an admin's password hash; raise NotFoundError."""
        now = time.time()
        async with self._tx(feed=False) as tx:
            changed = await tx.execute(
                "UPDATE admins SET password_hash = ?, updated_at = ? WHERE name = ?",
                password_hash,
                now,
                name,
            )
            if changed == 0:
                raise NotFoundError(f"no admin named {name!r}")
            await tx.execute("DELETE FROM admin_sessions WHERE admin = ?", name)
            await self._audit_tx(tx, now, actor, ACTION_ADMIN_PASSWD, details={"admin": name})

    async def set_admin_grants(
        self, name: str, grants: tuple[str, ...], grant_all: bool, actor: str
    ) -> AdminAccount:
        """Replace an admin's grant set; raise NotFoundError."""
        now = time.time()
        async with self._tx(feed=False) as tx:
            rows = await tx.fetch(
                f"SELECT {ADMIN_COLUMNS} FROM admins WHERE name = ?{self.dialect.for_update}", name
            )
            if not rows:
                raise NotFoundError(f"no admin named {name!r}")
            current = admin_account(rows[0])
            await tx.execute(
                "UPDATE admins SET grants = ?, grant_all = ?, updated_at = ? WHERE name = ?",
                roles_json(grants),
                grant_all,
                now,
                name,
            )
            await tx.execute("DELETE FROM admin_sessions WHERE admin = ?", name)
            await self._audit_tx(
                tx,
                now,
                actor,
                ACTION_ADMIN_GRANTS,
                details=grants_details(current, grants, grant_all),
            )
        return dataclasses.replace(
            current, grants=tuple(grants), grant_all=grant_all, updated_at=now
        )

    async def remove_admin(self, name: str, actor: str) -> None:
        """Delete an admin account; raise NotFoundError."""
        now = time.time()
        async with self._tx(feed=False) as tx:
            if await tx.execute("DELETE FROM admins WHERE name = ?", name) == 0:
                raise NotFoundError(f"no admin named {name!r}")
            await tx.execute("DELETE FROM admin_sessions WHERE admin = ?", name)
            await self._audit_tx(tx, now, actor, ACTION_ADMIN_REMOVE, details={"admin": name})

    # --- web sessions ------------------------------------------------------------
    async def create_session(
        self, session: AdminSession, *, idle_before: float, started_before: float
    ) -> None:
        """Store a new session; forget sessions idle since or started before the cut-offs."""
        async with self._tx(feed=False) as tx:
            await tx.execute(
                "DELETE FROM admin_sessions WHERE last_seen < ? OR created_at < ?",
                idle_before,
                started_before,
            )
            await tx.execute(
                f"INSERT INTO admin_sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                session.token_hash,
                session.admin,
                session.stamp,
                session.created_at,
                session.last_seen,
            )

    async def get_session(self, token_hash: bytes) -> AdminSession | None:
        """Return the session with this token hash, or None."""
        rows = await self._read(
            f"SELECT {SESSION_COLUMNS} FROM admin_sessions WHERE token_hash = ?", (token_hash,)
        )
        return session_of(rows[0]) if rows else None

    async def touch_session(self, token_hash: bytes, at: float) -> None:
        """Record activity on a session (its idle timeout starts again)."""
        async with self._tx(feed=False) as tx:
            await tx.execute(
                f"UPDATE admin_sessions SET last_seen = {self.dialect.greatest}(last_seen, ?)"
                " WHERE token_hash = ?",
                at,
                token_hash,
            )

    async def delete_session(self, token_hash: bytes) -> bool:
        """End one session; return False when there was none."""
        async with self._tx(feed=False) as tx:
            return (
                await tx.execute("DELETE FROM admin_sessions WHERE token_hash = ?", token_hash) > 0
            )

    # --- failed-login throttle -------------------------------------------------
    async def record_login_failure(
        self, subjects: tuple[str, ...], at: float, forget_before: float
    ) -> None:
        """Count one failed login against each subject; forget failures older than forget_before."""
        async with self._tx(feed=False) as tx:
            await tx.execute("DELETE FROM login_failures WHERE at < ?", forget_before)
            await tx.executemany(
                "INSERT INTO login_failures (subject, at) VALUES (?, ?)",
                [(subject, at) for subject in subjects],
            )

    async def login_failures(
        self, subjects: tuple[str, ...], since: float
    ) -> dict[str, LoginFailures]:
        """Return the failures since `since` of each subject that has any."""
        if not subjects:
            return {}
        rows = await self._read(
            "SELECT subject, COUNT(*), MAX(at) FROM login_failures"
            f" WHERE subject IN ({marks(len(subjects))}) AND at >= ? GROUP BY subject",
            (*subjects, since),
        )
        return {str(row[0]): LoginFailures(int(row[1]), float(row[2])) for row in rows}

    async def record_login_success(self, account: str, address: str, at: float) -> None:
        """Note that `account` logged in from `address` at `at` (its lockout spares it)."""
        async with self._tx(feed=False) as tx:
            await tx.execute(
                "INSERT INTO trusted_logins (account, address, at) VALUES (?, ?, ?)"
                " ON CONFLICT (account, address) DO UPDATE SET at = excluded.at",
                account,
                address,
                at,
            )

    async def trusted_login(self, account: str, address: str, since: float) -> bool:
        """Return True when `account` logged in from `address` at or after `since`."""
        rows = await self._read(
            "SELECT 1 FROM trusted_logins WHERE account = ? AND address = ? AND at >= ?",
            (account, address, since),
        )
        return bool(rows)
