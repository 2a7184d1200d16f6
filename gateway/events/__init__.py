"""Events for the outside world: signed webhook delivery and the audit-log outbox.

May import: store, keys, runtime, settings, clock.
"""
