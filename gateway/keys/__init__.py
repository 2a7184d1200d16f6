"""API keys: the key format, the in-memory table, the key rules, the change-feed follower and usage
counting.

May import: store (feed and usage only), settings, clock, policy. keyformat, table and rules
import no aiohttp and no store.
"""
