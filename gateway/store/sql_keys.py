"""The keys in SQL: create, read, list, edit, roll, revoke, delete, batches, usage."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from gateway.store.base import (
    EXPIRING_WITHIN,
    BatchAction,
    BatchResult,
    Grants,
    IdempotencyClaim,
    IdempotencyMismatchError,
    IdempotentReplayError,
    KeyChanges,
    KeyFilter,
    KeyRow,
    KeySort,
    KeyStatus,
    KeySummary,
    NameConflictError,
    NewKey,
    NotFoundError,
    RuleUse,
    SeenAddress,
    SortPosition,
    UsageHour,
)
from gateway.store.common import (
    ACTION_CREATE,
    ACTION_DELETE,
    ACTION_DELETE_REVOKED,
    ACTION_EDIT,
    ACTION_REINSTATE,
    ACTION_REINSTATE_ALL,
    ACTION_REVOKE,
    ACTION_REVOKE_ALL,
    ACTION_ROLL,
    ASCII_LOWER_TABLE,
    KEY_COLUMNS,
    Params,
    batch_counts_of,
    batch_details,
    check_grants,
    check_reinstatable,
    column_values,
    create_details,
    created_row,
    digests_of,
    edit_details,
    edited_row,
    key_row,
    like_pattern,
    rate_limit_json,
    roles_json,
    roll_details,
    rolled_row,
    status_condition,
    wanted_edits,
)
from gateway.store.sql import SqlBase, Tx
from gateway.store.sql_usage import add_rule_uses, add_usage_hours, note_addresses

# reinstate_all's of_batch naming the latest revoke_all batch, whoever ran it.
LAST_BATCH = "last"

INSERT_KEY = (
    "INSERT INTO keys (name, description, roles, status, digest, prefix,"
    " created_at, created_by, updated_at, expires_at, rate_limit)"
    " VALUES (?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?)"
)
# A claim is checked first in the same transaction: the upsert only guards a race.
INSERT_CLAIM = (
    "INSERT INTO idempotency_keys (actor, idem_key, fingerprint, key_id, created_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (actor, idem_key) DO UPDATE"
    " SET fingerprint = excluded.fingerprint, key_id = excluded.key_id,"
    " created_at = excluded.created_at"
)


class SqlKeys(SqlBase):
    """The KeyRecords role, written once for both backends.

    Every key write is one transaction that appends its change-feed entries and its audit
    event; the backend's `_tx(feed=True)` serialises key writes so feed sequences commit
    in order.
    """

    # --- create and read --------------------------------------------------------
    async def create_key(
        self, new: NewKey, actor: str, idempotency: IdempotencyClaim | None = None
    ) -> KeyRow:
        """Insert a key; raise NameConflictError if the name is taken.

        An idempotency claim made before by `actor` raises IdempotentReplayError (same
        fingerprint) or IdempotencyMismatchError; a new one is recorded with the key. Key
        writes are serialised, so two claims never race.
        """
        now = time.time()
        roles_text = roles_json(new.roles)
        async with self._tx(feed=True) as tx:
            if idempotency is not None:
                await self._check_claim(tx, actor, idempotency)
            try:
                key_id = await tx.insert_id(
                    INSERT_KEY,
                    new.name,
                    new.description,
                    roles_text,
                    new.digest,
                    new.prefix,
                    now,
                    actor,
                    now,
                    new.expires_at,
                    rate_limit_json(new.rate_limit),
                )
            except Exception as error:
                if self.dialect.is_unique_violation(error, "keys.name"):
                    raise NameConflictError(f"a key named {new.name!r} already exists") from None
                raise
            await tx.append_changes([(key_id, new.digest)], "upsert", now)
            await self._audit_tx(
                tx, now, actor, ACTION_CREATE, key_id, new.name, create_details(new)
            )
            if idempotency is not None:
                await tx.execute(
                    INSERT_CLAIM, actor, idempotency.key, idempotency.fingerprint, key_id, now
                )
        return created_row(key_id, new, roles_text, actor, now)

    async def _check_claim(self, tx: Tx, actor: str, claim: IdempotencyClaim) -> None:
        """Forget expired idempotency records; raise if `actor` made this claim before."""
        await tx.execute("DELETE FROM idempotency_keys WHERE created_at < ?", claim.not_before)
        found = await tx.fetch(
            "SELECT fingerprint, key_id FROM idempotency_keys WHERE actor = ? AND idem_key = ?",
            actor,
            claim.key,
        )
        if not found:
            return
        if str(found[0][0]) != claim.fingerprint:
            raise IdempotencyMismatchError(
                f"idempotency key {claim.key!r} was used for another request"
            )
        key_id = int(found[0][1])
        rows = await tx.fetch(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?", key_id)
        raise IdempotentReplayError(key_id, key_row(rows[0]) if rows else None)

    async def _one_key(self, condition: str, *values: Any) -> KeyRow | None:
        """Return the key matching `condition` (written with `?`), or None."""
        rows = await self._read(f"SELECT {KEY_COLUMNS} FROM keys WHERE {condition}", values)
        return key_row(rows[0]) if rows else None

    async def get_key(self, key_id: int) -> KeyRow | None:
        """Return a key by id, or None."""
        return await self._one_key("id = ?", key_id)

    async def get_key_by_name(self, name: str) -> KeyRow | None:
        """Return a key by exact name, or None."""
        return await self._one_key("name = ?", name)

    async def get_key_by_digest(self, digest: bytes) -> KeyRow | None:
        """Return the key whose secret (or whose secret before its last roll) has this digest."""
        return await self._one_key("digest = ? OR previous_digest = ?", digest, digest)

    async def list_keys(
        self,
        *,
        status: KeyFilter | None = None,
        query: str | None = None,
        limit: int = 100,
        after_id: int = 0,
        now: float | None = None,
        sort: KeySort = "id",
        after: SortPosition | None = None,
        expiring_within: float = EXPIRING_WITHIN,
        digest: bytes | None = None,
        role: str | None = None,
        created_by: str | None = None,
    ) -> list[KeyRow]:
        """List keys in `sort` order after a position, filtered by status and a text query.

        `role` keeps the keys holding that role (as held, includes not resolved);
        `created_by` the keys whose creator is exactly that actor.

        "active" excludes expired keys, "expired" is active with expires_at <= now, and the
        query matches name, description or display prefix case-insensitively (ASCII) with
        no wildcards; `digest` is an exact match on a secret's digest (current or rolled).
        Every order is an index walk from the position (keyset paging), so a page costs the
        same on the first page and the thousandth.
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        moment = time.time() if now is None else now
        params = Params(numbered=False)
        where: list[str] = []
        if sort == "id":
            where.append(f"id > {params.add(after_id)}")
            order = "id"
        else:
            expression, descending = self.dialect.sort_expressions[sort]
            direction, beyond = ("DESC", "<") if descending else ("ASC", ">")
            if after is not None:
                where.append(self.dialect.keyset(sort, expression, beyond, after, params))
            order = f"{expression} {direction}, id {direction}"
        condition = status_condition(status, moment, expiring_within, params)
        if condition is not None:
            where.append(condition)
        if query:
            # A substring of name, description or prefix, ASCII letters folded, no wildcards.
            pattern = like_pattern(query).translate(ASCII_LOWER_TABLE)
            fold = self.dialect.like_fold
            matches = [
                f"{fold.format(column)} LIKE {params.add(pattern)} ESCAPE '\\'"
                for column in ("name", "description", "prefix")
            ]
            where.append(f"({' OR '.join(matches)})")
        if digest is not None:
            where.append(
                f"(digest = {params.add(digest)} OR previous_digest = {params.add(digest)})"
            )
        if role is not None:
            where.append(self.dialect.has_role(role, params))
        if created_by is not None:
            where.append(f"created_by = {params.add(created_by)}")
        limit_mark = params.add(limit)
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            f"SELECT {KEY_COLUMNS} FROM keys {condition} ORDER BY {order} LIMIT {limit_mark}",
            params.values,
        )
        return [key_row(row) for row in rows]

    async def batch_counts(self, grants: Grants = None) -> dict[str, BatchResult]:
        """Return what revoke_all, reinstate_all and delete_revoked would do now, by action."""
        params = Params(numbered=False)
        scope = self.dialect.within_grants(grants, params)
        rows = await self._read(
            f"SELECT status, COUNT(*), COUNT(*) FILTER (WHERE {scope}) FROM keys GROUP BY status",
            params.values,
        )
        counts = batch_counts_of({str(row[0]): (int(row[1]), int(row[2])) for row in rows})
        counts["reinstate_last_revoke_all"] = BatchResult(0, 0)
        last = await self.last_revoke_all()
        if last is not None and last[1]:
            params = Params(numbered=False)
            scope = self.dialect.within_grants(grants, params)
            ids = self.dialect.id_list(last[1], params)
            rows = await self._read(
                f"SELECT COUNT(*), COUNT(*) FILTER (WHERE {scope}) FROM keys"
                f" WHERE status = 'revoked' AND id IN {ids}",
                params.values,
            )
            total, inside = int(rows[0][0]), int(rows[0][1])
            counts["reinstate_last_revoke_all"] = BatchResult(inside, total - inside)
        return counts

    # --- one key's writes -------------------------------------------------------
    async def update_key(
        self, key_id: int, changes: KeyChanges, actor: str, grants: Grants = None
    ) -> KeyRow:
        """Apply a partial edit; raise NotFoundError, NameConflictError or OutsideGrantsError.

        Fields equal to their current value are not changes; an edit that changes nothing
        writes nothing (no updated_at, change-feed entry or audit event).
        """
        now = time.time()
        async with self._tx(feed=True) as tx:
            current = await self._key_tx(tx, key_id)
            check_grants(current, grants)
            edits = wanted_edits(current, changes)
            if not edits:
                return current
            columns = column_values(edits)
            assignments = ", ".join(f"{field} = ?" for field in columns)
            try:
                await tx.execute(
                    f"UPDATE keys SET {assignments}, updated_at = ? WHERE id = ?",
                    *columns.values(),
                    now,
                    key_id,
                )
            except Exception as error:
                if self.dialect.is_unique_violation(error, "keys.name"):
                    raise NameConflictError(
                        f"a key named {edits['name']!r} already exists"
                    ) from None
                raise
            await tx.append_changes([(key_id, current.digest)], "upsert", now)
            await self._audit_tx(
                tx,
                now,
                actor,
                ACTION_EDIT,
                key_id,
                edits.get("name", current.name),
                edit_details(current, edits),
            )
        return edited_row(current, edits, columns, now)

    async def set_revoked(
        self, key_id: int, revoked: bool, actor: str, grants: Grants = None
    ) -> KeyRow:
        """Revoke or reinstate one key; raise NotFoundError, OutsideGrantsError, KeyExpiredError.

        Revoking a revoked key (or reinstating an active one) returns it unchanged and
        writes nothing; reinstating an expired key is refused, whatever its status.
        """
        now = time.time()
        status: KeyStatus = "revoked" if revoked else "active"
        revoked_at = now if revoked else None
        async with self._tx(feed=True) as tx:
            current = await self._key_tx(tx, key_id)
            check_grants(current, grants)
            if not revoked:
                check_reinstatable(current, now)
            if current.status == status:
                return current
            await tx.execute(
                "UPDATE keys SET status = ?, revoked_at = ?, updated_at = ? WHERE id = ?",
                status,
                revoked_at,
                now,
                key_id,
            )
            await tx.append_changes([(key_id, current.digest)], "upsert", now)
            action = ACTION_REVOKE if revoked else ACTION_REINSTATE
            await self._audit_tx(tx, now, actor, action, key_id, current.name)
        return dataclasses.replace(current, status=status, revoked_at=revoked_at, updated_at=now)

    async def delete_key(self, key_id: int, actor: str, grants: Grants = None) -> KeyRow:
        """Delete one key for good and return it; raise NotFoundError, OutsideGrantsError."""
        now = time.time()
        async with self._tx(feed=True) as tx:
            current = await self._key_tx(tx, key_id)
            check_grants(current, grants)
            await tx.execute("DELETE FROM keys WHERE id = ?", key_id)
            await tx.append_changes(digests_of(current), "delete", now)
            await self._audit_tx(
                tx, now, actor, ACTION_DELETE, key_id, current.name, {"status": current.status}
            )
        return current

    async def roll_key(
        self,
        key_id: int,
        digest: bytes,
        prefix: str,
        overlap: float,
        actor: str,
        grants: Grants = None,
    ) -> KeyRow:
        """Give a key a new secret; the current one keeps working for `overlap` seconds.

        The feed forgets a previous roll's old secret (a delete entry for its digest) and
        announces the key under its new digest; followers map both until the overlap ends.
        """
        now = time.time()
        until = now + overlap
        async with self._tx(feed=True) as tx:
            current = await self._key_tx(tx, key_id)
            check_grants(current, grants)
            await tx.execute(
                "UPDATE keys SET digest = ?, prefix = ?, previous_digest = ?,"
                " previous_expires_at = ?, rolled_at = ?, updated_at = ? WHERE id = ?",
                digest,
                prefix,
                current.digest,
                until,
                now,
                now,
                key_id,
            )
            if current.previous_digest is not None:
                await tx.append_changes([(key_id, current.previous_digest)], "delete", now)
            await tx.append_changes([(key_id, digest)], "upsert", now)
            await self._audit_tx(
                tx,
                now,
                actor,
                ACTION_ROLL,
                key_id,
                current.name,
                roll_details(overlap, until, prefix),
            )
        return rolled_row(current, digest, prefix, until, now)

    # --- batches ------------------------------------------------------------------
    async def _batch(
        self,
        actor: str,
        action: str,
        op: str,
        status: KeyStatus,
        write: str,
        values: tuple[object, ...],
        grants: Grants,
        of_batch: str | None = None,
    ) -> BatchResult:
        """Change every key with `status` within `grants` in one transaction.

        `write` is the statement (without WHERE) for the chosen keys, `values` its
        parameters. Feed entries, the write and one audit event (count, skipped, ids,
        batch id) commit together; the audit event is indexed under every key it touched.
        `of_batch`: only the keys that revoke_all batch changed ("last": the latest).
        """
        now = time.time()
        async with self._tx(feed=True) as tx:
            scope = "status = ?"
            params = Params(status, numbered=False)
            extra: dict[str, Any] = {"scope": "all"}
            if of_batch is not None:
                found = await self._revoke_all_batch(tx, of_batch)
                if found is None:
                    raise NotFoundError(f"no revoke_all batch {of_batch!r}")
                extra = {"scope": "batch", "of_batch": found[0]}
                scope += f" AND id IN {self.dialect.id_list(found[1], params)}"
            counted = list(params.values)
            found_total = await tx.fetch(f"SELECT COUNT(*) FROM keys WHERE {scope}", *counted)
            total = int(found_total[0][0])
            chosen = await tx.fetch(
                f"SELECT id, digest, previous_digest FROM keys WHERE {scope}"
                f" AND {self.dialect.within_grants(grants, params)} ORDER BY id",
                *params.values,
            )
            key_ids = [int(row[0]) for row in chosen]
            entries = [(int(row[0]), bytes(row[1])) for row in chosen]
            if op == "delete":
                entries += [(int(row[0]), bytes(row[2])) for row in chosen if row[2] is not None]
            await tx.append_changes(entries, op, now)
            if key_ids:
                params = Params(*values, numbered=False)
                ids = self.dialect.id_list(key_ids, params)
                await tx.execute(f"{write} WHERE id IN {ids}", *params.values)
            details = batch_details(BatchResult(len(key_ids), total - len(key_ids)), key_ids)
            if action == ACTION_REINSTATE_ALL:
                details.update(extra)
            result = BatchResult(len(key_ids), total - len(key_ids), details["batch_id"])
            audit_id = await self._audit_tx(tx, now, actor, action, details=details)
            params = Params(audit_id, numbered=False)
            ids = self.dialect.id_list(key_ids, params)
            await tx.execute(
                f"INSERT INTO audit_keys (key_id, audit_id) SELECT id, ? FROM {ids} AS chosen",
                *params.values,
            )
        return result

    async def revoke_all(self, actor: str, grants: Grants = None) -> BatchResult:
        """Revoke every active key within `grants` in one transaction."""
        now = time.time()
        return await self._batch(
            actor,
            ACTION_REVOKE_ALL,
            "upsert",
            "active",
            "UPDATE keys SET status = 'revoked', revoked_at = ?, updated_at = ?",
            (now, now),
            grants,
        )

    async def reinstate_all(
        self, actor: str, grants: Grants = None, of_batch: str | None = None
    ) -> BatchResult:
        """Reinstate every revoked key within `grants` in one transaction.

        `of_batch`: only those that revoke_all batch revoked ("last": the latest one's).
        """
        return await self._batch(
            actor,
            ACTION_REINSTATE_ALL,
            "upsert",
            "revoked",
            "UPDATE keys SET status = 'active', revoked_at = NULL, updated_at = ?",
            (time.time(),),
            grants,
            of_batch,
        )

    async def _revoke_all_batch(self, tx: Tx, batch_id: str) -> tuple[str, list[int]] | None:
        """The (batch id, key ids) of revoke_all batch `batch_id` ("last": the latest), or None."""
        if batch_id == LAST_BATCH:
            rows = await tx.fetch(
                "SELECT details FROM audit WHERE action = ? ORDER BY id DESC LIMIT 1",
                ACTION_REVOKE_ALL,
            )
        else:
            # Details are stored compact with sorted keys (details_json): an exact member.
            member = json.dumps({"batch_id": batch_id}, separators=(",", ":"))[1:-1]
            rows = await tx.fetch(
                "SELECT details FROM audit WHERE action = ? AND details LIKE ? ESCAPE '\\'"
                " ORDER BY id DESC LIMIT 1",
                ACTION_REVOKE_ALL,
                like_pattern(member),
            )
        if not rows:
            return None
        details = json.loads(rows[0][0] or "{}")
        found = details.get("batch_id")
        if not isinstance(found, str) or (batch_id != LAST_BATCH and found != batch_id):
            return None
        return found, [int(key_id) for key_id in details.get("key_ids", [])]

    async def last_revoke_all(self) -> tuple[str, list[int]] | None:
        """Return the latest revoke_all batch's id and the key ids it revoked, or None."""
        async with self._snapshot() as tx:
            return await self._revoke_all_batch(tx, LAST_BATCH)

    async def batch_keys(
        self, action: BatchAction, key_ids: Sequence[int], actor: str, grants: Grants = None
    ) -> BatchResult:
        """Revoke, reinstate or delete the chosen keys in one transaction, all or none.

        One audit entry per changed key, each with the batch's id (and its size); a key
        already in the wanted state is skipped. Raise NotFoundError, OutsideGrantsError,
        KeyExpiredError (reinstating an expired key): then nothing is written.
        """
        now = time.time()
        batch_id = uuid.uuid4().hex
        wanted = sorted(set(key_ids))
        async with self._tx(feed=True) as tx:
            rows = [await self._key_tx(tx, key_id) for key_id in wanted]
            for row in rows:
                check_grants(row, grants)
                if action == "reinstate":
                    check_reinstatable(row, now)
            target: KeyStatus = "revoked" if action == "revoke" else "active"
            chosen = rows if action == "delete" else [r for r in rows if r.status != target]
            details = {"batch_id": batch_id, "batch_size": len(wanted)}
            for row in chosen:
                if action == "delete":
                    await tx.execute("DELETE FROM keys WHERE id = ?", row.id)
                    await tx.append_changes(digests_of(row), "delete", now)
                    await self._audit_tx(
                        tx,
                        now,
                        actor,
                        ACTION_DELETE,
                        row.id,
                        row.name,
                        {**details, "status": row.status},
                    )
                    continue
                await tx.execute(
                    "UPDATE keys SET status = ?, revoked_at = ?, updated_at = ? WHERE id = ?",
                    target,
                    now if action == "revoke" else None,
                    now,
                    row.id,
                )
                await tx.append_changes([(row.id, row.digest)], "upsert", now)
                verb = ACTION_REVOKE if action == "revoke" else ACTION_REINSTATE
                await self._audit_tx(tx, now, actor, verb, row.id, row.name, details)
        return BatchResult(len(chosen), len(wanted) - len(chosen), batch_id)

    async def delete_revoked(self, actor: str, grants: Grants = None) -> BatchResult:
        """Delete every revoked key within `grants` in one transaction."""
        return await self._batch(
            actor,
            ACTION_DELETE_REVOKED,
            "delete",
            "revoked",
            "DELETE FROM keys",
            (),
            grants,
        )

    # --- usage and expiry ----------------------------------------------------------
    async def count_expiring(self, now: float, within: float) -> int:
        """Return how many active keys expire after `now` and within `within` seconds."""
        rows = await self._read(
            "SELECT COUNT(*) FROM keys WHERE status = 'active'"
            " AND expires_at > ? AND expires_at <= ?",
            (now, now + within),
        )
        return int(rows[0][0])

    async def key_summary(self, now: float, within: float, unused_before: float) -> KeySummary:
        """Count the keys by state: expiring within `within` seconds of `now`; unused: active
        keys last used before `unused_before` (or never, and created before it)."""
        active = "status = 'active' AND (expires_at IS NULL OR expires_at > ?)"
        rows = await self._read(
            "SELECT COUNT(*),"
            f" COUNT(*) FILTER (WHERE {active}),"
            " COUNT(*) FILTER (WHERE status = 'revoked'),"
            " COUNT(*) FILTER (WHERE status = 'active' AND expires_at <= ?),"
            " COUNT(*) FILTER (WHERE status = 'active' AND expires_at > ? AND expires_at <= ?),"
            f" COUNT(*) FILTER (WHERE {active} AND COALESCE(last_used_at, created_at) < ?)"
            " FROM keys",
            (now, now, now, now + within, now, unused_before),
        )
        total, active_count, revoked, expired, expiring, unused = (int(v) for v in rows[0])
        return KeySummary(total, active_count, revoked, expired, expiring, unused)

    # --- usage -----------------------------------------------------------------
    async def record_usage(
        self,
        usage: dict[int, tuple[float, int]],
        hours: Sequence[UsageHour] = (),
        rules: Sequence[RuleUse] = (),
        addresses: Sequence[SeenAddress] = (),
    ) -> None:
        """Add use counts and raise last_used_at for many keys, and add the hourly usage
        rows (`hours`), the per-rule rows (`rules`) and the addresses seen, in one
        transaction (a retried flush never counts twice).

        Unknown ids (keys deleted meanwhile) are ignored; no change-feed entry is written.
        Rows are updated in id order, so two instances flushing at once never deadlock.
        """
        if not usage and not hours and not rules and not addresses:
            return
        rows = [
            (uses, last_used, last_used, key_id)
            for key_id, (last_used, uses) in sorted(usage.items())
        ]
        async with self._tx(feed=False) as tx:
            await tx.executemany(
                "UPDATE keys SET use_count = use_count + ?,"
                f" last_used_at = {self.dialect.greatest}(COALESCE(last_used_at, ?), ?)"
                " WHERE id = ?",
                rows,
            )
            await add_usage_hours(tx, self.dialect.greatest, hours)
            await add_rule_uses(tx, self.dialect.greatest, rules)
            await note_addresses(tx, self.dialect.greatest, addresses)
