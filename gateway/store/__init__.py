"""Key stores: the KeyStore protocol and its SQLite and PostgreSQL implementations.

May import: ratelimit (the rate-limit value type), settings, clock. Imports nothing above
it (no keys, policy, proxy, admin, runtime).
"""
