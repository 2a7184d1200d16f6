"""The admin listener: key management API, sign-in and sessions, the page, health probes.

May import: proxy (its decision, credentials and refusals: `policy explain` decides as the
proxy does), runtime, keys, policy, store, settings, clock. The app factory lives in
gateway.admin.app; this package init imports nothing, so the CLI can use
gateway.admin.accounts without loading aiohttp.
"""
