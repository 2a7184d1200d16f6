"""The whole KeyStore in SQL: every role's shared methods on one base a backend completes."""

from __future__ import annotations

from gateway.store.sql_accounts import SqlAccounts
from gateway.store.sql_copy import SqlCopy
from gateway.store.sql_events import SqlEvents
from gateway.store.sql_feed import SqlFeed
from gateway.store.sql_keys import SqlKeys
from gateway.store.sql_usage import SqlUsage


class SqlStore(SqlKeys, SqlUsage, SqlFeed, SqlEvents, SqlAccounts, SqlCopy):
    """Every store method whose SQL and control flow are the same on SQLite and PostgreSQL.

    A backend adds its dialect, connections and transactions (see `SqlBase`), and its
    notifications; nothing of the contract's control flow is written twice.
    """
