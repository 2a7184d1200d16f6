"""The KeyStore protocol is the union of its roles, each method in exactly one role."""

from __future__ import annotations

from gateway.store import base

ROLES = (
    base.StoreLifecycle,
    base.KeyRecords,
    base.UsageRecords,
    base.Feed,
    base.AuditLog,
    base.NotifyState,
    base.LoginRecords,
    base.AdminAccounts,
    base.Sessions,
    base.StoreCopy,
)


def _members(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_keystore_is_every_role_and_nothing_more() -> None:
    """KeyStore inherits each role and declares no method of its own."""
    assert set(ROLES) <= set(base.KeyStore.__mro__)
    assert _members(base.KeyStore) == set()


def test_no_method_belongs_to_two_roles() -> None:
    """A consumer naming one role gets exactly that role's methods."""
    seen: dict[str, str] = {}
    for role in ROLES:
        for name in _members(role):
            assert name not in seen, f"{name} in {seen.get(name)} and {role.__name__}"
            seen[name] = role.__name__
    assert len(seen) == 61  # 59 methods and 2 properties
