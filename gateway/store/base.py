"""The KeyStore protocol, its record types and its errors (no I/O here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from gateway.ratelimit.limiters import RateLimit

KeyStatus = Literal["active", "revoked"]
# The lean row a process loads into its key table: digest, id, name, roles, status,
# expires_at, a rolled key's previous digest and the end of its overlap, its own rate limit.
AuthRow = tuple[
    bytes,
    int,
    str,
    tuple[str, ...],
    str,
    float | None,
    bytes | None,
    float | None,
    RateLimit | None,
]
ChangeOp = Literal["upsert", "delete"]
# Filters of the key list: "expiring" is active and expiring within a window from now.
KeyFilter = Literal["active", "revoked", "expired", "expiring"]
# Seconds ahead a key counts as expiring when the caller gives no window (14 days).
EXPIRING_WITHIN = 14 * 86_400
# Orders of the key list: by id (the default), or by name, creation or last use, "-" descending.
KeySort = Literal[
    "id", "name", "-name", "created_at", "-created_at", "last_used_at", "-last_used_at"
]
KEY_SORTS: tuple[KeySort, ...] = (
    "id",
    "name",
    "-name",
    "created_at",
    "-created_at",
    "last_used_at",
    "-last_used_at",
)
# Where a sorted page ends: the last row's sort value (name, or a time; -1 for never used) and id.
SortPosition = tuple[str | float, int]


class StoreError(Exception):
    """The one root of every store error (client errors, an unusable store, a pruned feed)."""


class NameConflictError(StoreError):
    """A key (or admin) with that name already exists."""


class NotFoundError(StoreError):
    """No record with that id or name."""


class OutsideGrantsError(StoreError):
    """The key has roles outside the acting administrator's grant set."""

    def __init__(self, key_name: str, roles: tuple[str, ...]) -> None:
        self.key_name = key_name
        self.roles = roles
        super().__init__(f"key {key_name!r} has role(s) outside your grant set: {', '.join(roles)}")


class KeyExpiredError(StoreError):
    """An expired key cannot be reinstated (give it a new expiry first)."""


class IdempotentReplayError(StoreError):
    """A create repeated under an idempotency key already used with the same request.

    `key_id` is the key the first request created; `row` is that key now (None once
    deleted). Its secret was shown once, to the first request, and is never stored.
    """

    def __init__(self, key_id: int, row: KeyRow | None) -> None:
        self.key_id = key_id
        self.row = row
        super().__init__(f"this idempotency key already created key {key_id}")


class IdempotencyMismatchError(StoreError):
    """An idempotency key reused with a different request (another body)."""


class StoreUnavailableError(StoreError):
    """The store cannot serve now: its file was deleted, the disk is full, read-only, corrupt.

    `cause` says which, in words an operator acts on; the message also names the store.
    The condition may pass by itself (space freed, file restored): callers retry later.
    `outcome_unknown` is set when the connection was lost while a write was committing:
    the write may have been made (check before retrying it).
    """

    def __init__(self, location: str, cause: str, *, outcome_unknown: bool = False) -> None:
        self.location = location
        self.cause = cause
        self.outcome_unknown = outcome_unknown
        super().__init__(f"store {location}: {cause}")


class StoreNotEmptyError(StoreError):
    """The target of a copy already holds data and overwriting was not asked for."""


class StoreMissingError(StoreError):
    """The database does not exist and the caller did not ask for it to be created."""

    def __init__(self, location: str) -> None:
        self.location = location
        super().__init__(f"no database at {location}")


class FeedPrunedError(StoreError):
    """Change-feed entries after the caller's sequence were pruned: reload the whole table."""

    def __init__(self, seq: int, pruned_through: int) -> None:
        self.seq = seq
        self.pruned_through = pruned_through
        super().__init__(f"change feed pruned through {pruned_through}, past sequence {seq}")


# Roles an administrator may act on: None for every role (grant-all admins and the CLI).
Grants = frozenset[str] | None


@dataclass(frozen=True, slots=True)
class UsageHour:
    """One key's counts in one hour (hour: unix seconds // 3600), as flushed or as summed.

    `addresses` is each instance's distinct client addresses, added up (an upper bound when
    instances share callers); `addresses_capped` when an instance saw more than it tracks.
    """

    key_id: int
    hour: int
    forwarded: int = 0
    denied: int = 0  # refused by the policy (403)
    limited: int = 0  # refused by the rate limit (429)
    upstream_errors: int = 0  # forwarded, answered 5xx (or failed: keygate's 502/504)
    addresses: int = 0
    addresses_capped: bool = False


@dataclass(frozen=True, slots=True)
class RuleUse:
    """A key's uses allowed by one policy rule in one day (day: unix seconds // 86400), as
    flushed; the rule named as written: role, methods (`GET,PUT` or `*`), path pattern."""

    key_id: int
    day: int
    role: str
    methods: str
    path: str
    count: int
    last_used_at: float


@dataclass(frozen=True, slots=True)
class RuleTotal:
    """A key's uses allowed by one rule over a window of days, added up."""

    role: str
    methods: str
    path: str
    count: int
    last_used_at: float


@dataclass(frozen=True, slots=True)
class SeenAddress:
    """A client address that presented a key, and when it was last seen."""

    key_id: int
    address: str
    last_seen_at: float


@dataclass(frozen=True, slots=True)
class KeySummary:
    """The keys counted by state for the page's summary line."""

    total: int
    active: int  # neither revoked nor expired
    revoked: int
    expired: int
    expiring: int  # active, expiring within the warning window
    unused: int  # active, not used since the cut-off (never-used keys created before it)


class BatchResult(NamedTuple):
    """What a batch action did: keys changed, and matching keys skipped (outside the grants).

    `batch_id`: the id its audit entries carry in their details ("" for a preview count).
    """

    changed: int
    skipped: int
    batch_id: str = ""


# A chosen-keys batch (`batch_keys`): what it does to each key.
BatchAction = Literal["revoke", "reinstate", "delete"]


class LoginFailures(NamedTuple):
    """Failed logins of one throttle subject within a window: how many, and the latest."""

    failures: int
    last_at: float


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One API key as stored: every field of the data model, never the secret."""

    id: int
    name: str
    description: str
    roles: tuple[str, ...]
    status: KeyStatus
    digest: bytes  # SHA-256 of the secret
    prefix: str
    created_at: float  # unix seconds
    created_by: str
    updated_at: float
    revoked_at: float | None
    expires_at: float | None
    last_used_at: float | None
    use_count: int
    # After a roll: the replaced secret's digest, when it stops working, when the roll was.
    previous_digest: bytes | None = None
    previous_expires_at: float | None = None
    rolled_at: float | None = None
    # The key's own rate limit, over its roles' default; None: the roles' (if any).
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class NewKey:
    """What is needed to insert a key; the secret itself never reaches the store."""

    name: str
    description: str
    roles: tuple[str, ...]
    digest: bytes
    prefix: str
    expires_at: float | None = None
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """A create's idempotency key: per actor, with the request's fingerprint (a hash of it).

    Records written before `not_before` (unix seconds) are forgotten: the key is new again.
    """

    key: str
    fingerprint: str
    not_before: float


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """A partial edit of a key; fields left as None are not changed.

    `expires_at` uses `clear_expiry=True` to remove an expiry (None means unchanged), and
    `rate_limit` `clear_rate_limit=True` to fall back to the roles' default.
    """

    name: str | None = None
    description: str | None = None
    roles: tuple[str, ...] | None = None
    expires_at: float | None = None
    clear_expiry: bool = False
    rate_limit: RateLimit | None = None
    clear_rate_limit: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    """One change-feed entry: the key's digest and its current row (None once deleted)."""

    seq: int
    digest: bytes
    row: KeyRow | None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit log entry; `details` is JSON-serialisable and never holds a secret."""

    id: int
    at: float
    actor: str
    action: str
    key_id: int | None
    key_name: str | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReceiverState:
    """Where one webhook receiver stands: the audit id it acknowledged, the head's retries.

    `receiver` is a digest of the URL (never the URL). `attempts`, `first_attempt`,
    `next_attempt` and `last_error` describe the event right after `cursor` while it fails;
    `owner` and `lease_until` say which process delivers to it (one at a time).
    """

    receiver: str
    cursor: int
    attempts: int = 0
    first_attempt: float | None = None
    next_attempt: float | None = None
    last_error: str | None = None
    owner: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True, slots=True)
class AbandonedEvent:
    """An event a receiver never acknowledged before its retries ran out."""

    receiver: str
    audit_id: int
    type: str
    attempts: int
    first_attempt: float
    abandoned_at: float
    last_error: str


@dataclass(frozen=True, slots=True)
class AdminSession:
    """A signed-in web session: the SHA-256 of its token (never the token), admin and times.

    `stamp` is a digest of the admin's password hash and grants when the session began; a
    session whose stamp no longer matches the account has ended. A session signed in with an
    identity (OpenID provider, backend) has a `source` (None: a local account), its subject
    and display name, its credentials `sealed` (encrypted under a key only the session
    token gives) and when they stop verifying; `admin` is then the audit actor.
    """

    token_hash: bytes
    admin: str
    stamp: str
    created_at: float
    last_seen: float
    source: str | None = None
    subject: str | None = None
    display_name: str | None = None
    sealed: bytes | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class AdminAccount:
    """An administrator of the admin API: password hash and the roles they may grant."""

    name: str
    password_hash: str
    grants: tuple[str, ...]
    grant_all: bool
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class StoreContents:
    """Everything `keygate store copy` moves: keys (with usage), admins and the audit log."""

    keys: list[KeyRow]
    admins: list[AdminAccount]
    audit: list[AuditEvent]


@runtime_checkable
class FeedNotifier(Protocol):
    """A store that can wake change-feed followers the moment a write commits."""

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake` on every committed change (and after every reconnect) until cancelled.

        Connection losses are retried with back-off; the caller keeps polling meanwhile.
        """


class StoreLifecycle(Protocol):
    """Where the store is, and opening, probing and closing it."""

    @property
    def location(self) -> str:
        """Where the data lives (a file path, a server), for messages."""

    @property
    def generation(self) -> int:
        """How many times the store was reopened on a replaced database since open().

        A new generation has its own change-feed sequence: followers reload everything.
        """

    async def open(self, *, create: bool = True) -> None:
        """Connect and apply pending schema migrations.

        Without `create`, a missing database raises StoreMissingError and nothing is made.
        """

    async def close(self) -> None:
        """Flush and disconnect."""

    async def ping(self) -> None:
        """Raise StoreUnavailableError (naming the cause) unless the store reads and writes."""


class KeyRecords(Protocol):
    """The keys: create, read, list, edit, roll, revoke, delete, batches, usage."""

    async def create_key(
        self, new: NewKey, actor: str, idempotency: IdempotencyClaim | None = None
    ) -> KeyRow:
        """Insert a key; raise NameConflictError if the name is taken.

        With an idempotency claim, the claim is recorded with the key in one transaction;
        a claim the actor made before (since `not_before`) raises IdempotentReplayError
        for the same fingerprint and IdempotencyMismatchError for another, creating nothing.
        """

    async def get_key(self, key_id: int) -> KeyRow | None:
        """Return a key by id, or None."""

    async def get_key_by_name(self, name: str) -> KeyRow | None:
        """Return a key by exact name, or None."""

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
        unused_before: float | None = None,
    ) -> list[KeyRow]:
        """List keys in `sort` order after a position, filtered by status and text.

        `role`: only keys holding that role; `created_by`: only keys that actor created;
        `unused_before`: only active keys not used since then (never used: created before).

        Sorted by id, the page starts after `after_id`; in any other order, after `after`.
        "expiring" keys are active and expire within `expiring_within` seconds of now.
        `digest` keeps only the key whose secret (or secret before its last roll) has it.
        """

    async def batch_counts(self, grants: Grants = None) -> dict[str, BatchResult]:
        """Return what revoke_all, reinstate_all and delete_revoked would do now, by action.

        Also reinstate_last_revoke_all: reinstate_all of the latest revoke_all batch.
        """

    async def get_key_by_digest(self, digest: bytes) -> KeyRow | None:
        """Return the key whose secret (or whose secret before its last roll) has this digest."""

    async def update_key(
        self, key_id: int, changes: KeyChanges, actor: str, grants: Grants = None
    ) -> KeyRow:
        """Apply a partial edit; raise NotFoundError, NameConflictError or OutsideGrantsError."""

    async def set_revoked(
        self, key_id: int, revoked: bool, actor: str, grants: Grants = None
    ) -> KeyRow:
        """Revoke or reinstate one key; raise NotFoundError, OutsideGrantsError, KeyExpiredError."""

    async def delete_key(self, key_id: int, actor: str, grants: Grants = None) -> KeyRow:
        """Delete one key for good and return it; raise NotFoundError, OutsideGrantsError."""

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

        A previous roll's old secret is forgotten. Raise NotFoundError, OutsideGrantsError.
        """

    async def revoke_all(self, actor: str, grants: Grants = None) -> BatchResult:
        """Revoke every active key within `grants` in one transaction."""

    async def reinstate_all(
        self, actor: str, grants: Grants = None, of_batch: str | None = None
    ) -> BatchResult:
        """Reinstate every revoked key within `grants` in one transaction.

        `of_batch`: only those the revoke_all batch with that id revoked ("last": the latest
        revoke_all's); raise NotFoundError when there is no such batch.
        """

    async def last_revoke_all(self) -> tuple[str, list[int]] | None:
        """Return the latest revoke_all batch's id and the key ids it revoked, or None."""

    async def batch_keys(
        self, action: BatchAction, key_ids: Sequence[int], actor: str, grants: Grants = None
    ) -> BatchResult:
        """Revoke, reinstate or delete the chosen keys in one transaction, all or none.

        One audit entry per changed key, each with the batch's id; a key already in the
        wanted state is skipped. Raise NotFoundError (a missing id), OutsideGrantsError,
        KeyExpiredError (reinstating an expired key).
        """

    async def delete_revoked(self, actor: str, grants: Grants = None) -> BatchResult:
        """Delete every revoked key within `grants` in one transaction."""

    async def record_usage(
        self,
        usage: dict[int, tuple[float, int]],
        hours: Sequence[UsageHour] = (),
        rules: Sequence[RuleUse] = (),
        addresses: Sequence[SeenAddress] = (),
    ) -> None:
        """Add use counts and raise last_used_at for many keys, and add `hours` to their
        key-hour rows and `rules` to their key-day-rule rows (additive upserts: every
        instance's flush adds up), and raise the `addresses`' last_seen_at, in one transaction.

        `usage` maps key id -> (last_used_at, uses since the previous flush).
        Writes no change-feed entry (usage is not auth-relevant).
        """

    async def count_expiring(self, now: float, within: float) -> int:
        """Return how many active keys expire after `now` and within `within` seconds."""

    async def trim_addresses(self, key_ids: Sequence[int], keep: int) -> int:
        """Keep only the newest `keep` addresses of each key in `key_ids`; return how many went."""

    async def key_summary(self, now: float, within: float, unused_before: float) -> KeySummary:
        """Count the keys by state: expiring within `within` seconds of `now`; unused: active
        keys last used before `unused_before` (or never, and created before it)."""


class Feed(Protocol):
    """The change feed and the cold-start load of the key table."""

    async def load_auth(self, sink: Callable[[list[AuthRow]], None]) -> int:
        """Feed every key's auth row to `sink` in chunks; return the feed sequence they reflect.

        This is the cold-start path for a million keys: no full KeyRow objects are built.
        """

    async def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Return change-feed entries with sequence > seq, oldest first.

        Raise FeedPrunedError when entries after `seq` were pruned: the caller reloads.
        """

    async def prune_feed(self, keep_entries: int, keep_before: float) -> int:
        """Delete the oldest feed entries, keeping the newest `keep_entries` and every entry
        written at or after `keep_before`; return how many were deleted."""

    async def current_seq(self) -> int:
        """Return the latest change-feed sequence number (0 when empty)."""


class AuditLog(Protocol):
    """The audit log: append, list, and read it in order (the webhooks' outbox)."""

    async def append_audit(
        self,
        actor: str,
        action: str,
        key_id: int | None = None,
        key_name: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record one audit event (for actions not already audited by a key write)."""

    async def list_audit(
        self,
        *,
        key_id: int | None = None,
        key_name: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        limit: int = 100,
        before_id: int | None = None,
        actions: Sequence[str] | None = None,
        until: float | None = None,
        text: str | None = None,
    ) -> list[AuditEvent]:
        """List audit events newest first (id < before_id), filtered: by key, actor, any of
        `actions`, since..until (inclusive) and `text`, a substring of the key name, actor
        or details as written (not their JSON escapes; ASCII letters folded, no wildcards)."""

    async def audit_after(self, after_id: int, limit: int = 500) -> list[AuditEvent]:
        """Return audit events with id > after_id, oldest first."""

    async def count_audit_after(self, after_id: int, actions: tuple[str, ...]) -> int:
        """Return how many audit events with id > after_id have one of `actions`."""


class NotifyState(Protocol):
    """Webhook receivers' cursors and leases, abandoned events, expiry notices."""

    async def open_receiver(self, receiver: str) -> ReceiverState:
        """Return a receiver's state; a new receiver starts after the newest audit event."""

    async def list_receivers(self) -> list[ReceiverState]:
        """Return every receiver's state, by receiver id."""

    async def lease_receiver(self, receiver: str, owner: str, now: float, until: float) -> bool:
        """Take or renew the right to deliver to `receiver` until `until`; False if held."""

    async def save_receiver(self, state: ReceiverState, expected_cursor: int) -> bool:
        """Write a receiver's cursor and retry state if its cursor is still `expected_cursor`."""

    async def abandon_event(
        self,
        state: ReceiverState,
        expected_cursor: int,
        event: AbandonedEvent,
        forget_before: float,
    ) -> bool:
        """Record an abandoned event and save `state` (past it) in one transaction.

        False (nothing written) if the cursor moved meanwhile; abandoned records older than
        `forget_before` are deleted.
        """

    async def list_abandoned(self, limit: int = 100) -> list[AbandonedEvent]:
        """Return abandoned events, newest first."""

    async def claim_expiry_notices(
        self, key_id: int, key_name: str, days: tuple[int, ...], expires_at: float, at: float
    ) -> tuple[int, ...]:
        """Record notices (key, days before expiry, expiry); return the days not sent before.

        When any is new, the nearest is audited (action `expiring`) in the same transaction:
        the audit log is the webhooks' outbox, so the notice is as durable as the claim.
        """


class LoginRecords(Protocol):
    """Failed-login counts and trusted logins, shared by every process using the store."""

    async def record_login_failure(
        self, subjects: tuple[str, ...], at: float, forget_before: float
    ) -> None:
        """Count one failed login against each subject; forget failures older than forget_before."""

    async def login_failures(
        self, subjects: tuple[str, ...], since: float
    ) -> dict[str, LoginFailures]:
        """Return the failures since `since` of each subject that has any."""

    async def record_login_success(self, account: str, address: str, at: float) -> None:
        """Note that `account` logged in from `address` at `at` (its lockout spares it)."""

    async def trusted_login(self, account: str, address: str, since: float) -> bool:
        """Return True when `account` logged in from `address` at or after `since`."""


class AdminAccounts(Protocol):
    """Admin accounts: names, password hashes, grant sets."""

    async def add_admin(
        self, name: str, password_hash: str, grants: tuple[str, ...], grant_all: bool, actor: str
    ) -> AdminAccount:
        """Create an admin account; raise NameConflictError."""

    async def get_admin(self, name: str) -> AdminAccount | None:
        """Return an admin account by name, or None."""

    async def list_admins(self) -> list[AdminAccount]:
        """Return every admin account ordered by name."""

    async def set_admin_password(self, name: str, password_hash: str, actor: str) -> None:
        """Replace an admin's password hash; raise NotFoundError."""

    async def set_admin_grants(
        self, name: str, grants: tuple[str, ...], grant_all: bool, actor: str
    ) -> AdminAccount:
        """Replace an admin's grant set; raise NotFoundError."""

    async def remove_admin(self, name: str, actor: str) -> None:
        """Delete an admin account; raise NotFoundError."""


class Sessions(Protocol):
    """Web sessions (password, grant changes and removal end an admin's sessions)."""

    async def create_session(
        self, session: AdminSession, *, idle_before: float, started_before: float
    ) -> None:
        """Store a new session; forget sessions idle since or started before the cut-offs."""

    async def get_session(self, token_hash: bytes) -> AdminSession | None:
        """Return the session with this token hash, or None."""

    async def touch_session(self, token_hash: bytes, at: float) -> None:
        """Record activity on a session (its idle timeout starts again)."""

    async def delete_session(self, token_hash: bytes) -> bool:
        """End one session; return False when there was none."""

    async def update_session_credentials(
        self, token_hash: bytes, sealed: bytes, expires_at: float | None
    ) -> None:
        """Replace an identity session's sealed credentials (after a refresh)."""

    async def list_sessions(self) -> list[AdminSession]:
        """Return the stored sessions, newest first, bounded (sealed credentials left out)."""


class StoreCopy(Protocol):
    """Moving every record between stores."""

    async def export_contents(self) -> StoreContents:
        """Return every key, admin account and audit event (one consistent read)."""

    async def import_contents(self, contents: StoreContents, *, replace: bool) -> None:
        """Write `contents` with their ids in one transaction (feed entries for every key).

        Without `replace` a store holding any key, admin or audit event raises StoreNotEmptyError;
        with it, what was there is deleted first.
        """


class UsageRecords(Protocol):
    """Usage per key and hour (written by `KeyRecords.record_usage`): read and prune."""

    async def usage_hours(self, key_id: int, first_hour: int, last_hour: int) -> list[UsageHour]:
        """Return a key's rows with first_hour <= hour <= last_hour, oldest first."""

    async def prune_usage(self, before_hour: int, addresses_kept: int | None = None) -> int:
        """Delete usage rows of hours before `before_hour` (rule rows of days before its day,
        addresses last seen before it); with `addresses_kept`, keep only each key's newest
        that many addresses. Return how many rows went."""

    async def rule_totals(self, key_id: int, first_day: int) -> list[RuleTotal]:
        """Return a key's uses per rule in the days from `first_day`, most used first."""

    async def seen_addresses(self, key_id: int, limit: int) -> list[SeenAddress]:
        """Return a key's last `limit` client addresses, newest first."""


class KeyStore(
    StoreLifecycle,
    KeyRecords,
    UsageRecords,
    Feed,
    AuditLog,
    NotifyState,
    LoginRecords,
    AdminAccounts,
    Sessions,
    StoreCopy,
    Protocol,
):
    """Persistent key storage: every role above, as one store implements them.

    Every key write appends change-feed entries in the same transaction and records an
    audit event (actor is the admin name, or "cli:<user>" for the CLI). Any call raises
    StoreUnavailableError while the store is unusable (deleted, full, read-only, corrupt).
    """
