"""Per-key rate limits: the GCRA decision, the local and the Redis limiters.

May import: settings, clock. Imports no aiohttp and no store.
"""
